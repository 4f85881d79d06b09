"""Task cards, raw import, prepared splits and batching."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from ttlora_moe.data.batching import Collator
from ttlora_moe.data.cards import (
    TaskCard,
    list_tasks,
    load_task_card,
    save_task_card,
    validate_task_name,
)
from ttlora_moe.data.prepare import main, prepare_all, prepare_params, prepare_task
from ttlora_moe.data.prepared import PREPARED_COLUMNS, load_split, prepared_md5
from ttlora_moe.data.raw import import_raw
from ttlora_moe.errors import BadInput

PARAMS = {"seed": 1, "validation_fraction": 0.2, "validation_max_rows": 1000, "carve_test_fraction": 0.25,
          "test_max_rows": 1000, "min_rows": 2}
SPLITS = ("train", "validation", "test")


def card(**kw) -> TaskCard:
    base = dict(name="toy", source="toy", text="sentence", text_pair=None, label="label",
                label_names=["neg", "pos"], label_values=[0, 1], metric="accuracy",
                files={"train": "train.parquet", "test": "validation.parquet"})
    return TaskCard(**{**base, **kw})


def write_toy(folder: Path, n_train: int = 60, labels=(0, 1), extra_rows=()) -> Path:
    """train.parquet (n_train rows + extra_rows) and validation.parquet (12 rows + a GLUE-style -1 row)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"sentence": f"sentence number {i}", "label": labels[i % len(labels)]} for i in range(n_train)]
    pd.DataFrame(rows + list(extra_rows)).to_parquet(folder / "train.parquet")
    hidden = [{"sentence": "hidden", "label": -1}] if type(labels[0]) is int else []
    pd.DataFrame([{"sentence": f"held out {i}", "label": labels[i % len(labels)]} for i in range(12)]
                 + hidden).to_parquet(folder / "validation.parquet")
    return folder


def inputs(folder: Path, split: str) -> set[tuple]:
    return {(r["text"], r["text_pair"]) for r in load_split(folder, split)}


def assert_disjoint(folder: Path) -> None:
    sets = {s: inputs(folder, s) for s in SPLITS}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]


# --- task cards -------------------------------------------------------------------------------


def test_cards_round_trip_and_unknown_task_lists_known(tmp_path):
    path = save_task_card(card(), tmp_path)
    assert path == tmp_path / "toy.yaml" and list_tasks(tmp_path) == ["toy"]
    assert [p.name for p in tmp_path.iterdir()] == ["toy.yaml"]  # no temp file left behind
    loaded = load_task_card("toy", tmp_path)
    assert loaded == card() and loaded.num_labels == 2
    with pytest.raises(BadInput, match=r"unknown task 'nope' \(known: toy"):
        load_task_card("nope", tmp_path)
    with pytest.raises(BadInput, match="unknown task '../toy'"):
        load_task_card("../toy", tmp_path)
    for bad in ("1abc", "has-dash", "Upper", ""):
        with pytest.raises(BadInput, match="not a valid identifier"):
            validate_task_name(bad)
    validate_task_name("winogrande_l")


def test_tasks_dir_follows_the_environment(tmp_path, monkeypatch):
    save_task_card(card(name="other"), tmp_path)
    monkeypatch.setenv("TTLORA_TASKS_DIR", str(tmp_path))
    assert list_tasks() == ["other"] and load_task_card("other").name == "other"


@pytest.mark.parametrize("text, message", [
    ("source: [unclosed", "not valid YAML"),
    ("- a list", "not a mapping"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\n", "missing keys \\['label_values'\\]"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [0, 1]\ncolour: red\n",
     "unknown keys \\['colour'\\]"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [0]\nfiles: {train: t.parquet}\n",
     "1 label_values for 2 label_names"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [1, '1']\nfiles: {train: t.parquet}\n",
     "repeats a label value"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b, c]\nlabel_values: [0, 1, 2]\nmetric: f1\n"
     "files: {train: t.parquet}\n", "metric 'f1' .* needs two labels"),
    ("source: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [0, 1]\nfiles: {test: t.parquet}\n",
     "map 'train'"),
    ("name: other\nsource: toy\ntext: sentence\nlabel: label\nlabel_names: [a, b]\nlabel_values: [0, 1]\n"
     "files: {train: t.parquet}\n", "names task 'other'"),
])
def test_malformed_cards_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "toy.yaml").write_text(text)
    with pytest.raises(BadInput, match=message) as info:
        load_task_card("toy", tmp_path)
    assert "\n" not in str(info.value)


# --- prepare ----------------------------------------------------------------------------------


def test_prepare_is_deterministic_disjoint_and_drops_unlabelled_and_duplicates(tmp_path):
    raw = write_toy(tmp_path / "raw", extra_rows=[{"sentence": "sentence number 1", "label": 1},
                                                  {"sentence": "held out 3", "label": 1}])
    first = prepare_task(card(), raw, tmp_path / "a", PARAMS)
    second = prepare_task(card(), raw, tmp_path / "b", PARAMS)
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.parquet").read_bytes() == (tmp_path / "b" / f"{split}.parquet").read_bytes()
    assert prepared_md5(tmp_path / "a") == prepared_md5(tmp_path / "b") == first["md5"] == second["md5"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["meta.json", "test.parquet", "train.parquet",
                                                                  "validation.parquet"]
    assert first["dropped"]["train"] == {"unlabelled": 0, "empty_text": 0, "duplicates": 1, "in_test": 1}
    assert first["dropped"]["test"] == {"unlabelled": 1, "empty_text": 0, "duplicates": 0}
    assert first["rows"] == {"train": 48, "validation": 12, "test": 12}
    assert first["labels"]["validation"] == {"neg": 6, "pos": 6}  # stratified
    assert_disjoint(tmp_path / "a")
    rows = load_split(tmp_path / "a", "train")
    assert set(rows[0]) == set(PREPARED_COLUMNS)
    assert all(r["text_pair"] is None and r["label"] in (0, 1) for r in rows)
    assert "hidden" not in {r["text"] for r in load_split(tmp_path / "a", "test")}
    sample = load_split(tmp_path / "a", "train", max_samples=5, seed=3)
    assert len(sample) == 5 and sample == load_split(tmp_path / "a", "train", max_samples=5, seed=3)
    assert sample != load_split(tmp_path / "a", "train", max_samples=5, seed=4)
    # Another seed gives another split of the same rows.
    other = prepare_task(card(), raw, tmp_path / "c", {**PARAMS, "seed": 2})
    assert other["rows"] == first["rows"] and inputs(tmp_path / "c", "validation") != inputs(tmp_path / "a", "validation")


def test_pairs_and_conflicting_labels(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [{"a": f"premise {i}", "b": f"hypothesis {i}", "y": i % 2} for i in range(40)]
    rows += [{"a": "premise 0", "b": "hypothesis 0", "y": 1},  # same input, other label: kept, never straddles
             {"a": "premise 0", "b": "other hypothesis", "y": 0},  # same text, other pair: a different input
             {"a": "premise x", "b": None, "y": 0}]  # pair task without a pair: dropped as empty
    pd.DataFrame(rows).to_parquet(raw / "train.parquet")
    pd.DataFrame([{"a": f"t {i}", "b": "h", "y": i % 2} for i in range(10)]).to_parquet(raw / "test.parquet")
    pair = card(text="a", text_pair="b", label="y", files={"train": "train.parquet", "test": "test.parquet"})
    meta = prepare_task(pair, raw, tmp_path / "out", PARAMS)
    assert meta["dropped"]["train"]["empty_text"] == 1 and meta["conflicting_labels"]["train"] == 1
    assert sum(meta["rows"].values()) == 42 + 10
    where = [s for s in SPLITS if ("premise 0", "hypothesis 0") in inputs(tmp_path / "out", s)]
    assert len(where) == 1
    assert sum(r["text"] == "premise 0" and r["text_pair"] == "hypothesis 0"
               for r in load_split(tmp_path / "out", where[0])) == 2
    assert ("premise 0", "other hypothesis") in set().union(*(inputs(tmp_path / "out", s) for s in SPLITS))
    assert_disjoint(tmp_path / "out")


def test_unlabelled_file_gives_router_inputs_outside_every_split(tmp_path):
    raw = write_toy(tmp_path / "raw")
    hidden = [{"sentence": f"test input {i}", "label": -1} for i in range(30)]
    pd.DataFrame(hidden + [{"sentence": "sentence number 3", "label": -1},  # already in a split: dropped
                           {"sentence": "test input 4", "label": -1},       # duplicate: dropped
                           {"sentence": "  ", "label": -1}]).to_parquet(raw / "test.parquet")
    with_unlabelled = card(files={"train": "train.parquet", "test": "validation.parquet", "unlabelled": "test.parquet"})
    meta = prepare_task(with_unlabelled, raw, tmp_path / "a", {**PARAMS, "unlabelled_max_rows": 25})
    plain = prepare_task(card(), raw, tmp_path / "b", PARAMS)
    assert meta["md5"] == plain["md5"]  # the labelled splits do not change
    table = pd.read_parquet(tmp_path / "a" / "unlabelled.parquet")
    assert list(table.columns) == ["text", "text_pair"] and meta["rows"]["unlabelled"] == len(table) == 25
    assert set(table["text"]) <= {f"test input {i}" for i in range(30)} and table["text_pair"].isna().all()
    assert "test.parquet" in meta["raw_files"] and "unlabelled" in meta["origin"]
    again = prepare_task(with_unlabelled, raw, tmp_path / "c", {**PARAMS, "unlabelled_max_rows": 25})
    assert (tmp_path / "c" / "unlabelled.parquet").read_bytes() == (tmp_path / "a" / "unlabelled.parquet").read_bytes()
    assert again["rows"] == meta["rows"]
    pd.DataFrame([{"other": "x"}]).to_parquet(raw / "test.parquet")
    with pytest.raises(BadInput, match="not in its unlabelled file"):
        prepare_task(with_unlabelled, raw, tmp_path / "d", PARAMS)


def test_minus_one_is_unlabelled_unless_the_card_makes_it_a_class(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame([{"sentence": f"s {i}", "label": i % 2 * 2 - 1} for i in range(40)]).to_parquet(raw / "train.parquet")
    pd.DataFrame([{"sentence": f"t {i}", "label": i % 2 * 2 - 1} for i in range(10)]).to_parquet(raw / "validation.parquet")
    signed = card(label_values=[-1, 1], label_names=["no", "yes"])
    meta = prepare_task(signed, raw, tmp_path / "out", PARAMS)
    assert meta["dropped"]["test"]["unlabelled"] == 0 and meta["labels"]["test"] == {"no": 5, "yes": 5}
    with pytest.raises(BadInput, match="single class"):  # with 0/1 cards, the -1 rows are hidden labels
        prepare_task(card(), raw, tmp_path / "out2", PARAMS)


def test_string_and_boolean_labels_map_to_ids(tmp_path):
    raw = write_toy(tmp_path / "raw", labels=(True, False))
    pd.DataFrame([{"sentence": f"v {i}", "label": bool(i % 2)} for i in range(10)]).to_parquet(raw / "validation.parquet")
    meta = prepare_task(card(label_values=[False, True], label_names=["no", "yes"]), raw, tmp_path / "out", PARAMS)
    assert meta["labels"]["test"] == {"no": 5, "yes": 5}
    assert {r["label"] for r in load_split(tmp_path / "out", "train")} == {0, 1}
    test_rows = load_split(tmp_path / "out", "test")
    assert all(r["label"] == int(r["text"].split()[1]) % 2 for r in test_rows)  # True -> 1

    raw2 = write_toy(tmp_path / "raw2", labels=("NEUTRAL", "ENTAILMENT", "CONTRADICTION"))
    pd.DataFrame([{"sentence": f"v {i}", "label": "ENTAILMENT"} for i in range(9)]
                 + [{"sentence": "blank", "label": ""}]).to_parquet(raw2 / "validation.parquet")
    sick = card(label_values=["ENTAILMENT", "NEUTRAL", "CONTRADICTION"], label_names=["entailment", "neutral", "contradiction"])
    meta = prepare_task(sick, raw2, tmp_path / "out2", PARAMS)
    assert meta["labels"]["test"] == {"entailment": 9} and meta["dropped"]["test"]["unlabelled"] == 1
    assert meta["labels"]["train"] == {"entailment": 16, "neutral": 16, "contradiction": 16}
    assert {r["label"] for r in load_split(tmp_path / "out2", "train")} == {0, 1, 2}


def test_bad_data_is_a_one_line_error_and_writes_nothing(tmp_path):
    raw = write_toy(tmp_path / "raw", labels=(0, 1, 7))
    with pytest.raises(BadInput, match=r"label value\(s\) \[7\] in column 'label' of train.parquet"):
        prepare_task(card(), raw, tmp_path / "out", PARAMS)
    with pytest.raises(BadInput, match=r"column 'text' of task 'toy' is not in train.parquet \(columns: sentence, label\)"):
        prepare_task(card(text="text"), raw, tmp_path / "out", PARAMS)
    with pytest.raises(BadInput, match="column 'premise2'"):
        prepare_task(card(text_pair="premise2"), raw, tmp_path / "out", PARAMS)
    pd.DataFrame([{"sentence": i, "label": i % 2} for i in range(30)]).to_parquet(raw / "train.parquet")
    with pytest.raises(BadInput, match="input column 'sentence' .* is not text"):
        prepare_task(card(), raw, tmp_path / "out", PARAMS)
    write_toy(tmp_path / "raw3", labels=(1,))
    with pytest.raises(BadInput, match="single class"):
        prepare_task(card(), tmp_path / "raw3", tmp_path / "out", PARAMS)
    write_toy(tmp_path / "raw4")
    pd.DataFrame([{"sentence": "held out", "label": -1}]).to_parquet(tmp_path / "raw4" / "validation.parquet")
    with pytest.raises(BadInput, match="the test split has 0 rows after cleaning"):
        prepare_task(card(), tmp_path / "raw4", tmp_path / "out", PARAMS)
    with pytest.raises(BadInput, match="no file matching 'train-\\*.parquet'"):
        prepare_task(card(files={"train": "train-*.parquet"}), tmp_path / "raw4", tmp_path / "out", PARAMS)
    assert not (tmp_path / "out").exists()
    with pytest.raises(BadInput, match="missing or empty"):
        prepare_task(card(), tmp_path / "nowhere", tmp_path / "out", PARAMS)


def test_failed_prepare_keeps_the_previous_output(tmp_path):
    raw = write_toy(tmp_path / "raw")
    meta = prepare_task(card(), raw, tmp_path / "out", PARAMS)
    pd.DataFrame([{"sentence": "x", "label": 9}]).to_parquet(raw / "train.parquet")
    with pytest.raises(BadInput):
        prepare_task(card(), raw, tmp_path / "out", PARAMS)
    assert prepared_md5(tmp_path / "out") == meta["md5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no temp folders left


def test_prepare_params_are_checked():
    assert prepare_params(None)["seed"] == 13
    with pytest.raises(BadInput, match=r"unknown prepare param\(s\) \['validaton_fraction'\]"):
        prepare_params({"validaton_fraction": 0.1})
    with pytest.raises(BadInput, match="validation_fraction must be a fraction"):
        prepare_params({"validation_fraction": 1.5})
    with pytest.raises(BadInput, match="test_max_rows must be a positive integer or null"):
        prepare_params({"test_max_rows": 0})
    with pytest.raises(BadInput, match="seed must be an integer"):
        prepare_params({"seed": "13"})


def test_carving_when_there_is_no_train_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame([{"sentence": f"s {i}", "label": i % 2} for i in range(40)]).to_parquet(raw / "validation.parquet")
    meta = prepare_task(card(files={"labelled": "validation.parquet"}), raw, tmp_path / "out", PARAMS)
    assert meta["rows"] == {"train": 24, "validation": 6, "test": 10}  # 25% of 40 = 10; 20% of 30 = 6
    assert meta["labels"]["test"] == {"neg": 5, "pos": 5}
    assert any("train/validation/test carved from validation.parquet" in n for n in meta["notes"])
    assert meta["origin"]["test"] == "carved from validation.parquet"
    assert_disjoint(tmp_path / "out")
    # A test cap on a carve sends the rest to train: nothing is lost.
    capped = prepare_task(card(files={"labelled": "validation.parquet"}), raw, tmp_path / "capped",
                          {**PARAMS, "test_max_rows": 4})
    assert capped["rows"] == {"train": 28, "validation": 8, "test": 4}


def test_mnli_style_test_file_plus_labelled_pool_and_test_cap(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame([{"sentence": f"m {i}", "label": i % 2} for i in range(30)]).to_parquet(raw / "validation_matched-0.parquet")
    pd.DataFrame([{"sentence": f"mm {i}", "label": i % 2} for i in range(50)]).to_parquet(raw / "validation_mismatched-0.parquet")
    mnli = card(files={"test": "validation_matched-*.parquet", "labelled": "validation_mismatched-*.parquet"})
    meta = prepare_task(mnli, raw, tmp_path / "out", {**PARAMS, "test_max_rows": 20})
    assert meta["rows"] == {"train": 40, "validation": 10, "test": 20}
    assert meta["dropped"]["test"]["over_test_max_rows"] == 10
    assert all(r["text"].startswith("m ") for r in load_split(tmp_path / "out", "test"))
    assert all(r["text"].startswith("mm ") for s in ("train", "validation") for r in load_split(tmp_path / "out", s))
    assert any("train and validation carved from validation_mismatched" in n for n in meta["notes"])


def test_load_split_errors(tmp_path):
    with pytest.raises(BadInput, match="does not exist .*prepare the task first"):
        load_split(tmp_path, "train")
    with pytest.raises(BadInput, match="unknown split 'dev'"):
        load_split(tmp_path, "dev")
    with pytest.raises(BadInput, match="prepare the task first"):
        prepared_md5(tmp_path)


def test_cli_prepare_prints_one_line_and_exits_2_on_bad_input(tmp_path, monkeypatch, capsys):
    save_task_card(card(), tmp_path / "tasks")
    monkeypatch.setenv("TTLORA_TASKS_DIR", str(tmp_path / "tasks"))
    raw = write_toy(tmp_path / "raw")
    (tmp_path / "params.yaml").write_text("prepare:\n  seed: 1\n  min_rows: 2\n")
    args = ["prepare", "toy", "--raw", str(raw), "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("toy: train 54, validation 6, test 12 rows")
    (tmp_path / "params.yaml").write_text("prepare:\n  sed: 1\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown prepare param(s) ['sed']" in err
    assert main(["prepare", "nope", "--raw", str(raw), "--out", str(tmp_path / "o")]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_prepare_all_loops_over_tasks(tmp_path, monkeypatch):
    save_task_card(card(), tmp_path / "tasks")
    save_task_card(card(name="toy2"), tmp_path / "tasks")
    monkeypatch.setenv("TTLORA_TASKS_DIR", str(tmp_path / "tasks"))
    write_toy(tmp_path / "raw" / "toy")
    write_toy(tmp_path / "raw" / "toy2", n_train=30)
    metas = prepare_all(["toy", "toy2"], tmp_path / "raw", tmp_path / "prepared", PARAMS)
    assert {t: m["rows"]["train"] for t, m in metas.items()} == {"toy": 48, "toy2": 24}
    assert (tmp_path / "prepared" / "toy2" / "meta.json").exists()


# --- import -----------------------------------------------------------------------------------


def test_import_raw_from_a_mirror_and_missing_files(tmp_path, monkeypatch):
    write_toy(tmp_path / "mirror" / "toy")
    (tmp_path / "mirror" / "toy" / "test.parquet").write_bytes(b"unused")
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(tmp_path / "mirror"))
    dest = import_raw(card(), tmp_path / "raw" / "toy")
    assert sorted(p.name for p in dest.iterdir()) == ["train.parquet", "validation.parquet"]
    assert (dest / "train.parquet").read_bytes() == (tmp_path / "mirror" / "toy" / "train.parquet").read_bytes()
    with pytest.raises(BadInput, match="no file matching 'nothing-\\*.parquet' .*it holds test.parquet"):
        import_raw(card(files={"train": "nothing-*.parquet"}), tmp_path / "raw" / "other")
    assert not (tmp_path / "raw" / "other").exists()
    with pytest.raises(BadInput, match="no folder 'elsewhere' .* in the data mirror"):
        import_raw(card(source="elsewhere"), tmp_path / "raw" / "x")
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(tmp_path / "gone"))
    with pytest.raises(BadInput, match="does not exist"):
        import_raw(card(), tmp_path / "raw" / "x")
    monkeypatch.delenv("TTLORA_DATA_MIRROR")
    with pytest.raises(BadInput, match="TTLORA_DATA_MIRROR is not set .*shared/datasets"):
        import_raw(card(source="elsewhere"), tmp_path / "raw" / "x")
    # An explicit mirror argument needs no environment variable.
    assert import_raw(card(), tmp_path / "raw" / "again", tmp_path / "mirror").is_dir()


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
    hub = card(source="owner/toy:plain", files={"train": "train-*.parquet", "test": "validation-*.parquet"})
    dest = import_raw(hub, tmp_path / "raw")
    assert calls == [("owner/toy", "plain")]
    assert sorted(p.name for p in dest.iterdir()) == ["train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    assert prepare_task(hub, dest, tmp_path / "out", PARAMS)["rows"]["test"] == 10
    with pytest.raises(BadInput, match="cannot load hub dataset 'owner/broken': offline"):
        import_raw(card(source="owner/broken"), tmp_path / "raw2")
    with pytest.raises(BadInput, match="no file matching 'train.parquet'"):
        import_raw(card(source="owner/toy"), tmp_path / "raw3")


# --- batching ---------------------------------------------------------------------------------


def test_collator_pads_to_the_batch_and_truncates(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    collate = Collator(tokenizer, max_length=6)
    batch = collate([{"text": "good movie", "text_pair": None, "label": 1},
                     {"text": "the cat sat on the mat and it was very good", "text_pair": None, "label": 0}])
    assert batch["input_ids"].shape == (2, 6)  # truncated to max_length
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert batch["labels"].tolist() == [1, 0] and str(batch["labels"].dtype) == "torch.int64"
    short = collate([{"text": "good", "text_pair": None, "label": 1}, {"text": "bad movie", "text_pair": None, "label": 0}])
    assert short["input_ids"].shape == (2, 4)  # padded only to the longest in this batch
    pairs = collate([{"text": "good", "text_pair": "yes", "label": 1}, {"text": "bad", "text_pair": "no no", "label": 0}])
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert pairs["input_ids"][0].tolist() == [cls, tokenizer.convert_tokens_to_ids("good"), sep,
                                              tokenizer.convert_tokens_to_ids("yes"), sep, tokenizer.pad_token_id]
    mixed = collate([{"text": "good", "text_pair": "yes", "label": 1}, {"text": "bad", "text_pair": None, "label": 0}])
    assert mixed["input_ids"].shape == (2, 5) and mixed["labels"].tolist() == [1, 0]
    unlabelled = collate([{"text": "good", "text_pair": None}])
    assert set(unlabelled) == {"input_ids", "attention_mask"}


# --- the real mirror --------------------------------------------------------------------------


def test_shipped_cards_match_the_real_mirror(mirror):
    if mirror is None:
        pytest.skip("no dataset mirror (TTLORA_DATA_MIRROR or ../shared/datasets)")
    names = list_tasks()
    assert {"mnli", "cola", "rte", "sst2", "qnli", "qqp", "mrpc", "boolq", "sick", "cb"} <= set(names)
    for name in names:
        c = load_task_card(name)
        for role, pattern in c.files.items():
            files = sorted((mirror / c.source).glob(pattern))
            assert files, f"{name}: no {role} file {pattern}"
            frame = pd.read_parquet(files[0])
            columns = set(frame.columns)
            assert {c.text, c.label, *([c.text_pair] if c.text_pair else [])} <= columns, (name, columns)
            if role == "unlabelled":  # labels, if any, are ignored
                continue
            raw_labels = {v for v in frame[c.label].tolist() if v not in (-1, "")}
            assert raw_labels == set(c.label_values) or role == "test" and raw_labels <= set(c.label_values), name


def test_real_sst2_and_cb_prepare(mirror, tmp_path):
    if mirror is None:
        pytest.skip("no dataset mirror (TTLORA_DATA_MIRROR or ../shared/datasets)")
    cb = load_task_card("cb")
    raw = import_raw(cb, tmp_path / "raw" / "cb", mirror)
    meta = prepare_task(cb, raw, tmp_path / "cb", {})
    assert meta["dropped"]["train"]["duplicates"] == 3500  # 3,750 rows = 250 examples x 15 templates
    assert meta["rows"]["train"] + meta["rows"]["validation"] == 250
    assert meta["rows"]["test"] == 56 and meta["labels"]["test"] == {"entailment": 23, "contradiction": 28, "neutral": 5}
    assert_disjoint(tmp_path / "cb")

    sst2 = load_task_card("sst2")
    meta = prepare_task(sst2, mirror / "sst2", tmp_path / "sst2", {})  # reads the mirror in place
    assert meta["rows"]["test"] == 872 and meta["labels"]["test"] == {"negative": 428, "positive": 444}
    assert meta["dropped"]["train"]["duplicates"] == 366
    assert meta["rows"]["train"] + meta["rows"]["validation"] == 67349 - 366
    assert 2000 <= meta["rows"]["validation"] <= 2010  # capped; inputs with two labels stay together
    assert meta["dropped"]["test"]["unlabelled"] == 0
    assert sorted(meta["raw_files"]) == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet",
                                         "validation-00000-of-00001.parquet"]
    assert meta["rows"]["unlabelled"] == 1821  # GLUE's 1,821 hidden-label test sentences: router inputs only
