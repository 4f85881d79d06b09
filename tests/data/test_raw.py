"""Raw import from a mirror or the hub, and reading raw files: careless CSVs, and every unreadable file as one line."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from tests.toys import PREPARE_PARAMS, toy_card, write_toy
from ttlora_moe.data import raw
from ttlora_moe.data.prepare import prepare_task
from ttlora_moe.data.raw import (
    copy_raw_file,
    data_files,
    file_kind,
    import_raw,
    is_raw_file,
    read_raw_file,
)
from ttlora_moe.errors import BadInput


def test_import_raw_from_a_mirror_and_missing_files(tmp_path, monkeypatch):
    write_toy(tmp_path / "mirror" / "toy")
    (tmp_path / "mirror" / "toy" / "test.parquet").write_bytes(b"unused")
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(tmp_path / "mirror"))
    dest = import_raw(toy_card(), tmp_path / "raw" / "toy")
    assert sorted(p.name for p in dest.iterdir()) == ["train.parquet", "validation.parquet"]
    assert (dest / "train.parquet").read_bytes() == (tmp_path / "mirror" / "toy" / "train.parquet").read_bytes()
    with pytest.raises(BadInput, match="no file matching 'nothing-\\*.parquet' .*it holds test.parquet"):
        import_raw(toy_card(files={"train": "nothing-*.parquet"}), tmp_path / "raw" / "other")
    assert not (tmp_path / "raw" / "other").exists()
    with pytest.raises(BadInput, match="no folder 'elsewhere' .* in the data mirror"):
        import_raw(toy_card(source="elsewhere"), tmp_path / "raw" / "x")
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(tmp_path / "gone"))
    with pytest.raises(BadInput, match="does not exist"):
        import_raw(toy_card(), tmp_path / "raw" / "x")
    monkeypatch.delenv("TTLORA_DATA_MIRROR")
    with pytest.raises(BadInput, match="TTLORA_DATA_MIRROR is not set .*shared/datasets"):
        import_raw(toy_card(source="elsewhere"), tmp_path / "raw" / "x")
    # An explicit mirror argument needs no environment variable.
    assert import_raw(toy_card(), tmp_path / "raw" / "again", tmp_path / "mirror").is_dir()
    # a card registered from a path on another machine says where its raw data is: DVC
    with pytest.raises(BadInput, match="/elsewhere/toy of task 'toy' does not exist here.*dvc pull data/raw/toy.dvc"):
        import_raw(toy_card(source="/elsewhere/toy"), tmp_path / "raw" / "x")


def test_import_raw_from_the_hub(tmp_path, monkeypatch):
    """The hub path, with `datasets.load_dataset` replaced (no network here)."""
    calls = []

    class FakeSplit:
        def __init__(self, n):
            self.frame = pd.DataFrame([{"sentence": f"h {i}", "label": i % 2} for i in range(n)])

        def to_parquet(self, path):
            self.frame.to_parquet(path)

    def load_dataset(name, config=None):
        calls.append((name, config))
        if name == "owner/broken":
            raise ConnectionError("offline")
        return {"train": FakeSplit(30), "validation": FakeSplit(10)}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("TTLORA_DATA_MIRROR", raising=False)
    hub = toy_card(source="owner/toy:plain", files={"train": "train-*.parquet", "test": "validation-*.parquet"})
    dest = import_raw(hub, tmp_path / "raw")
    assert calls == [("owner/toy", "plain")]
    assert sorted(p.name for p in dest.iterdir()) == ["train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    assert prepare_task(hub, dest, tmp_path / "out", PREPARE_PARAMS)["rows"]["test"] == 10
    with pytest.raises(BadInput, match="cannot load hub dataset 'owner/broken': offline"):
        import_raw(toy_card(source="owner/broken"), tmp_path / "raw2")
    with pytest.raises(BadInput, match="no file matching 'train.parquet'"):
        import_raw(toy_card(source="owner/toy"), tmp_path / "raw3")


def _read(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return read_raw_file(path)


def test_a_careless_csv_reads_as_text_cells(tmp_path):
    """A byte-order mark, CRLF, blank lines, spaces around headers, trailing commas, a quoted newline
    and a short row: every cell text, nothing guessed into numbers or NaN."""
    text = ('\ufeff text , label ,\r\n\r\n"one\nline two",1,\r\n  \r\nNA,0.0,\r\n"a, b",\r\n')
    df = _read(tmp_path, "careless.CSV", text)
    assert list(df.columns) == ["text", "label"]
    assert df.to_dict("records") == [{"text": "one\nline two", "label": "1"}, {"text": "NA", "label": "0.0"},
                                     {"text": "a, b", "label": ""}]


@pytest.mark.parametrize("name, content, message", [
    ("latin.csv", "text,label\ncaf\xe9,1\n".encode("latin-1"), "is not UTF-8 text \\(byte 0xe9 on line 2\\) .*re-save it as UTF-8"),
    ("wide.csv", "text,label\r\n".encode("utf-16"), "is UTF-16 text .*UTF-8"),
    ("binary.csv", b"PK\x03\x04\x00\x00", "is not a text file \\(a NUL byte on line 1\\)"),
    ("semi.csv", "text;label\na;1\n", "one column 'text;label': its values look separated by semicolons"),
    ("tabs.csv", "text\tlabel\na\t1\n", "separated by tabs"),
    ("broken.csv", "text,label\na,1\nb,1\nc, d,0\n", "line 4 of .* has 3 values but the header has 2 .*quote"),
    ("quote.csv", 'text,label\na,1\n"open,1\nb,0\n', "line 3 of .* is not valid CSV \\(unexpected end of data\\)"),
    ("dup.csv", "text, label,text\na,1,b\n", "has the column 'text' twice \\(columns 1 and 3\\)"),
    ("empty.csv", "\n\n", "is empty"),
    ("bad.jsonl", '{"text": "a"}\n{"text": \n', "is not valid JSON Lines \\(line 2: Expecting value\\)"),
    ("bad.parquet", b"PAR1 not really", "is not a readable Parquet file"),
])
def test_unreadable_files_are_one_line_naming_file_and_line(tmp_path, name, content, message):
    with pytest.raises(BadInput, match=message) as info:
        _read(tmp_path, name, content)
    assert "\n" not in str(info.value) and str(tmp_path / name) in str(info.value)
    assert "re-import" not in str(info.value)


def test_upper_case_suffixes_links_and_files_that_are_not_regular(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    pd.DataFrame({"sentence": ["a", "b"], "label": [0, 1]}).to_parquet(folder / "train.Parquet")
    (folder / "linked.csv").symlink_to(tmp_path / "elsewhere.csv")
    (tmp_path / "elsewhere.csv").write_text("sentence,label\nc,1\n")
    assert [p.name for p in data_files(folder.iterdir())] == ["linked.csv", "train.Parquet"]
    assert len(read_raw_file(folder / "train.Parquet")) == 2 and is_raw_file(folder / "x.JSONL")
    os.mkfifo(folder / "pipe.csv")
    with pytest.raises(BadInput, match="pipe.csv is a named pipe, not a regular file"):
        data_files(folder.iterdir())
    (folder / "pipe.csv").unlink()
    (folder / "device.csv").symlink_to("/dev/null")
    assert file_kind(folder / "device.csv") == "a character device"
    (folder / "device.csv").unlink()
    (folder / "gone.csv").symlink_to(tmp_path / "missing.csv")
    assert file_kind(folder / "gone.csv") == "a broken symbolic link"


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "locked.csv"
    path.write_text("sentence,label\na,1\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(raw.shutil, "copyfile", refuse)
    with pytest.raises(BadInput, match=f"cannot read {path}: Permission denied .*chmod"):
        copy_raw_file(path, tmp_path / "copy.csv")
    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(BadInput, match=f"cannot read {path}: Permission denied"):
        read_raw_file(path)
