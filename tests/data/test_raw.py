"""Raw import from a mirror or the hub."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest

from tests.toys import PREPARE_PARAMS, toy_card, write_toy
from ttlora_moe.data.prepare import prepare_task
from ttlora_moe.data.raw import import_raw
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
