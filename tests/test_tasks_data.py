"""Task cards, raw import, prepared splits and batching."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ttlora_moe.data import Collator, import_raw, load_split, prepare_task, prepared_md5
from ttlora_moe.errors import BadInput
from ttlora_moe.tasks import TaskCard, list_tasks, load_task_card, save_task_card, validate_task_name

PARAMS = {"seed": 1, "validation_fraction": 0.2, "validation_max_rows": 1000, "carve_test_fraction": 0.25,
          "test_max_rows": 1000, "min_rows": 2}


def card(**kw) -> TaskCard:
    base = dict(name="toy", source="toy", text="sentence", text_pair=None, label="label",
                label_names=["neg", "pos"], label_values=[0, 1], metric="accuracy",
                files={"train": "train.parquet", "test": "validation.parquet"})
    return TaskCard(**{**base, **kw})


def write_toy(folder: Path, n_train: int = 60, labels=(0, 1), extra_rows=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"sentence": f"sentence number {i}", "label": labels[i % len(labels)]} for i in range(n_train)]
    pd.DataFrame(rows + list(extra_rows)).to_parquet(folder / "train.parquet")
    hidden = [{"sentence": "hidden", "label": -1}] if type(labels[0]) is int else []  # GLUE-style unlabelled row
    pd.DataFrame([{"sentence": f"held out {i}", "label": labels[i % len(labels)]} for i in range(12)]
                 + hidden).to_parquet(folder / "validation.parquet")
    return folder


def test_cards_round_trip_and_unknown_task_lists_known(tmp_path):
    save_task_card(card(), tmp_path)
    assert list_tasks(tmp_path) == ["toy"]
    assert load_task_card("toy", tmp_path) == card()
    with pytest.raises(BadInput, match=r"unknown task 'nope' \(known: toy\)"):
        load_task_card("nope", tmp_path)
    for bad in ("1abc", "has-dash", "Upper"):
        with pytest.raises(BadInput, match="not a valid identifier"):
            validate_task_name(bad)


def test_prepare_is_deterministic_disjoint_and_drops_unlabelled_and_duplicates(tmp_path):
    raw = write_toy(tmp_path / "raw", extra_rows=[{"sentence": "sentence number 1", "label": 1}])
    first = prepare_task(card(), raw, tmp_path / "a", PARAMS)
    prepare_task(card(), raw, tmp_path / "b", PARAMS)
    for split in ("train", "validation", "test"):
        assert (tmp_path / "a" / f"{split}.parquet").read_bytes() == (tmp_path / "b" / f"{split}.parquet").read_bytes()
    assert prepared_md5(tmp_path / "a") == prepared_md5(tmp_path / "b")
    assert first["dropped"]["train"]["duplicates"] == 1
    assert first["dropped"]["test"]["unlabelled"] == 1
    assert first["rows"] == {"train": 48, "validation": 12, "test": 12}
    texts = {s: {r["text"] for r in load_split(tmp_path / "a", s)} for s in ("train", "validation", "test")}
    assert not (texts["train"] & texts["validation"]) and not (texts["train"] & texts["test"])
    assert all(r["text_pair"] is None and r["label"] in (0, 1) for r in load_split(tmp_path / "a", "train"))
    assert len(load_split(tmp_path / "a", "train", max_samples=5, seed=3)) == 5


def test_string_and_boolean_labels_map_to_ids(tmp_path):
    raw = write_toy(tmp_path / "raw", labels=(True, False))
    pd.DataFrame([{"sentence": f"v {i}", "label": bool(i % 2)} for i in range(10)]).to_parquet(raw / "validation.parquet")
    prepare_task(card(label_values=[False, True]), raw, tmp_path / "out", PARAMS)
    assert {r["label"] for r in load_split(tmp_path / "out", "train")} == {0, 1}
    raw2 = write_toy(tmp_path / "raw2", labels=("NEG", "POS"))
    pd.DataFrame([{"sentence": f"v {i}", "label": "POS"} for i in range(10)]).to_parquet(raw2 / "validation.parquet")
    meta = prepare_task(card(label_values=["NEG", "POS"]), raw2, tmp_path / "out2", PARAMS)
    assert meta["labels"]["test"] == {"pos": 10}


def test_bad_data_is_a_one_line_error_and_writes_nothing(tmp_path):
    raw = write_toy(tmp_path / "raw", labels=(0, 1, 7))
    with pytest.raises(BadInput, match=r"label value\(s\) \['7'\]"):
        prepare_task(card(), raw, tmp_path / "out", PARAMS)
    with pytest.raises(BadInput, match="column 'text' .* is not in"):
        prepare_task(card(text="text"), raw, tmp_path / "out", PARAMS)
    pd.DataFrame([{"sentence": i, "label": i % 2} for i in range(30)]).to_parquet(raw / "train.parquet")
    with pytest.raises(BadInput, match="is not text"):
        prepare_task(card(), raw, tmp_path / "out", PARAMS)
    write_toy(tmp_path / "raw3", labels=(1,))
    with pytest.raises(BadInput, match="single class"):
        prepare_task(card(), tmp_path / "raw3", tmp_path / "out", PARAMS)
    assert not (tmp_path / "out").exists()
    with pytest.raises(BadInput, match="missing or empty"):
        prepare_task(card(), tmp_path / "nowhere", tmp_path / "out", PARAMS)


def test_carving_when_there_is_no_train_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame([{"sentence": f"s {i}", "label": i % 2} for i in range(40)]).to_parquet(raw / "validation.parquet")
    meta = prepare_task(card(files={"labelled": "validation.parquet"}), raw, tmp_path / "out", PARAMS)
    assert meta["rows"] == {"test": 10, "validation": 6, "train": 24} | meta["rows"]
    assert sum(meta["rows"].values()) == 40
    assert any("carved" in n for n in meta["notes"])


def test_import_raw_from_a_mirror_and_missing_files(tmp_path, monkeypatch):
    write_toy(tmp_path / "mirror" / "toy")
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(tmp_path / "mirror"))
    dest = import_raw(card(), tmp_path / "raw" / "toy")
    assert sorted(p.name for p in dest.iterdir()) == ["train.parquet", "validation.parquet"]
    with pytest.raises(BadInput, match="no file matching"):
        import_raw(card(files={"train": "nothing-*.parquet"}), tmp_path / "raw" / "other")
    assert not (tmp_path / "raw" / "other").exists()
    monkeypatch.delenv("TTLORA_DATA_MIRROR")
    with pytest.raises(BadInput, match="TTLORA_DATA_MIRROR"):
        import_raw(card(source="elsewhere"), tmp_path / "raw" / "x")


def test_collator_pads_to_the_batch_and_truncates(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    collate = Collator(tokenizer, max_length=6)
    batch = collate([{"text": "good movie", "text_pair": None, "label": 1},
                     {"text": "the cat sat on the mat and it was very good", "text_pair": None, "label": 0}])
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0]
    mixed = collate([{"text": "good", "text_pair": "yes", "label": 1}, {"text": "bad", "text_pair": None, "label": 0}])
    assert mixed["input_ids"].shape == (2, 5) and mixed["labels"].tolist() == [1, 0]


def test_shipped_cards_match_the_real_mirror(mirror, tmp_path):
    if mirror is None:
        pytest.skip("no dataset mirror beside the checkout")
    for name in list_tasks():
        c = load_task_card(name)
        for pattern in c.files.values():
            files = sorted((mirror / c.source).glob(pattern))
            assert files, f"{name}: {pattern}"
            columns = set(pd.read_parquet(files[0]).columns)
            assert {c.text, c.label, *( [c.text_pair] if c.text_pair else [])} <= columns, name
    raw = import_raw(load_task_card("cb"), tmp_path / "raw" / "cb", mirror)
    meta = prepare_task(load_task_card("cb"), raw, tmp_path / "cb", {})
    assert meta["rows"]["train"] + meta["rows"]["validation"] == 250  # 3,750 rows = 250 examples x 15 templates
    assert meta["rows"]["test"] == 56
