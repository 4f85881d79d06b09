"""Prepared splits: deterministic, disjoint, stratified; every dropped row counted; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.toys import PREPARE_PARAMS, choice_card, choice_frame, toy_card, write_toy
from ttlora_moe.data.cards import (
    load_task_card,
    save_task_card,
)
from ttlora_moe.data.choices import options_text
from ttlora_moe.data.prepare import main, prepare_all, prepare_params, prepare_task
from ttlora_moe.data.prepared import PREPARED_COLUMNS, load_split, prepared_md5
from ttlora_moe.data.raw import import_raw
from ttlora_moe.errors import BadInput

SPLITS = ("train", "validation", "test")


def inputs(folder: Path, split: str) -> set[tuple]:
    return {(r["text"], r["text_pair"]) for r in load_split(folder, split)}


def assert_disjoint(folder: Path) -> None:
    sets = {s: inputs(folder, s) for s in SPLITS}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]


def test_prepare_is_deterministic_disjoint_and_drops_unlabelled_and_duplicates(tmp_path):
    raw = write_toy(tmp_path / "raw", extra_rows=[{"sentence": "sentence number 1", "label": 1},
                                                  {"sentence": "held out 3", "label": 1}])
    first = prepare_task(toy_card(), raw, tmp_path / "a", PREPARE_PARAMS)
    second = prepare_task(toy_card(), raw, tmp_path / "b", PREPARE_PARAMS)
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
    other = prepare_task(toy_card(), raw, tmp_path / "c", {**PREPARE_PARAMS, "seed": 2})
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
    pair = toy_card(text="a", text_pair="b", label="y", files={"train": "train.parquet", "test": "test.parquet"})
    meta = prepare_task(pair, raw, tmp_path / "out", PREPARE_PARAMS)
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
    with_unlabelled = toy_card(files={"train": "train.parquet", "test": "validation.parquet", "unlabelled": "test.parquet"})
    meta = prepare_task(with_unlabelled, raw, tmp_path / "a", {**PREPARE_PARAMS, "unlabelled_max_rows": 25})
    plain = prepare_task(toy_card(), raw, tmp_path / "b", PREPARE_PARAMS)
    assert meta["md5"] == plain["md5"]  # the labelled splits do not change
    table = pd.read_parquet(tmp_path / "a" / "unlabelled.parquet")
    assert list(table.columns) == ["text", "text_pair"] and meta["rows"]["unlabelled"] == len(table) == 25
    assert set(table["text"]) <= {f"test input {i}" for i in range(30)} and table["text_pair"].isna().all()
    assert "test.parquet" in meta["raw_files"] and "unlabelled" in meta["origin"]
    again = prepare_task(with_unlabelled, raw, tmp_path / "c", {**PREPARE_PARAMS, "unlabelled_max_rows": 25})
    assert (tmp_path / "c" / "unlabelled.parquet").read_bytes() == (tmp_path / "a" / "unlabelled.parquet").read_bytes()
    assert again["rows"] == meta["rows"]
    pd.DataFrame([{"other": "x"}]).to_parquet(raw / "test.parquet")
    with pytest.raises(BadInput, match="not in its unlabelled file"):
        prepare_task(with_unlabelled, raw, tmp_path / "d", PREPARE_PARAMS)


def test_minus_one_is_unlabelled_unless_the_card_makes_it_a_class(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame([{"sentence": f"s {i}", "label": i % 2 * 2 - 1} for i in range(40)]).to_parquet(raw / "train.parquet")
    pd.DataFrame([{"sentence": f"t {i}", "label": i % 2 * 2 - 1} for i in range(10)]).to_parquet(raw / "validation.parquet")
    signed = toy_card(label_values=[-1, 1], label_names=["no", "yes"])
    meta = prepare_task(signed, raw, tmp_path / "out", PREPARE_PARAMS)
    assert meta["dropped"]["test"]["unlabelled"] == 0 and meta["labels"]["test"] == {"no": 5, "yes": 5}
    with pytest.raises(BadInput, match="single class"):  # with 0/1 cards, the -1 rows are hidden labels
        prepare_task(toy_card(), raw, tmp_path / "out2", PREPARE_PARAMS)


def test_string_and_boolean_labels_map_to_ids(tmp_path):
    raw = write_toy(tmp_path / "raw", labels=(True, False))
    pd.DataFrame([{"sentence": f"v {i}", "label": bool(i % 2)} for i in range(10)]).to_parquet(raw / "validation.parquet")
    meta = prepare_task(toy_card(label_values=[False, True], label_names=["no", "yes"]), raw, tmp_path / "out", PREPARE_PARAMS)
    assert meta["labels"]["test"] == {"no": 5, "yes": 5}
    assert {r["label"] for r in load_split(tmp_path / "out", "train")} == {0, 1}
    test_rows = load_split(tmp_path / "out", "test")
    assert all(r["label"] == int(r["text"].split()[1]) % 2 for r in test_rows)  # True -> 1

    raw2 = write_toy(tmp_path / "raw2", labels=("NEUTRAL", "ENTAILMENT", "CONTRADICTION"))
    pd.DataFrame([{"sentence": f"v {i}", "label": "ENTAILMENT"} for i in range(9)]
                 + [{"sentence": "blank", "label": ""}]).to_parquet(raw2 / "validation.parquet")
    sick = toy_card(label_values=["ENTAILMENT", "NEUTRAL", "CONTRADICTION"], label_names=["entailment", "neutral", "contradiction"])
    meta = prepare_task(sick, raw2, tmp_path / "out2", PREPARE_PARAMS)
    assert meta["labels"]["test"] == {"entailment": 9} and meta["dropped"]["test"]["unlabelled"] == 1
    assert meta["labels"]["train"] == {"entailment": 16, "neutral": 16, "contradiction": 16}
    assert {r["label"] for r in load_split(tmp_path / "out2", "train")} == {0, 1, 2}


def test_bad_data_is_a_one_line_error_and_writes_nothing(tmp_path):
    raw = write_toy(tmp_path / "raw", labels=(0, 1, 7))
    with pytest.raises(BadInput, match=r"label value\(s\) \[7\] in column 'label' of train.parquet"):
        prepare_task(toy_card(), raw, tmp_path / "out", PREPARE_PARAMS)
    with pytest.raises(BadInput, match=r"column 'text' of task 'toy' is not in train.parquet \(columns: sentence, label\)"):
        prepare_task(toy_card(text="text"), raw, tmp_path / "out", PREPARE_PARAMS)
    with pytest.raises(BadInput, match="column 'premise2'"):
        prepare_task(toy_card(text_pair="premise2"), raw, tmp_path / "out", PREPARE_PARAMS)
    pd.DataFrame([{"sentence": i, "label": i % 2} for i in range(30)]).to_parquet(raw / "train.parquet")
    with pytest.raises(BadInput, match="input column 'sentence' .* is not text"):
        prepare_task(toy_card(), raw, tmp_path / "out", PREPARE_PARAMS)
    write_toy(tmp_path / "raw3", labels=(1,))
    with pytest.raises(BadInput, match="single class"):
        prepare_task(toy_card(), tmp_path / "raw3", tmp_path / "out", PREPARE_PARAMS)
    write_toy(tmp_path / "raw4")
    pd.DataFrame([{"sentence": "held out", "label": -1}]).to_parquet(tmp_path / "raw4" / "validation.parquet")
    with pytest.raises(BadInput, match="the test split has 0 rows after cleaning"):
        prepare_task(toy_card(), tmp_path / "raw4", tmp_path / "out", PREPARE_PARAMS)
    with pytest.raises(BadInput, match="no file matching 'train-\\*.parquet'"):
        prepare_task(toy_card(files={"train": "train-*.parquet"}), tmp_path / "raw4", tmp_path / "out", PREPARE_PARAMS)
    assert not (tmp_path / "out").exists()
    with pytest.raises(BadInput, match="missing or empty"):
        prepare_task(toy_card(), tmp_path / "nowhere", tmp_path / "out", PREPARE_PARAMS)


def test_failed_prepare_keeps_the_previous_output(tmp_path):
    raw = write_toy(tmp_path / "raw")
    meta = prepare_task(toy_card(), raw, tmp_path / "out", PREPARE_PARAMS)
    pd.DataFrame([{"sentence": "x", "label": 9}]).to_parquet(raw / "train.parquet")
    with pytest.raises(BadInput):
        prepare_task(toy_card(), raw, tmp_path / "out", PREPARE_PARAMS)
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
    meta = prepare_task(toy_card(files={"labelled": "validation.parquet"}), raw, tmp_path / "out", PREPARE_PARAMS)
    assert meta["rows"] == {"train": 24, "validation": 6, "test": 10}  # 25% of 40 = 10; 20% of 30 = 6
    assert meta["labels"]["test"] == {"neg": 5, "pos": 5}
    assert any("train/validation/test carved from validation.parquet" in n for n in meta["notes"])
    assert meta["origin"]["test"] == "carved from validation.parquet"
    assert_disjoint(tmp_path / "out")
    # A test cap on a carve sends the rest to train: nothing is lost.
    capped = prepare_task(toy_card(files={"labelled": "validation.parquet"}), raw, tmp_path / "capped",
                          {**PREPARE_PARAMS, "test_max_rows": 4})
    assert capped["rows"] == {"train": 28, "validation": 8, "test": 4}


def test_mnli_style_test_file_plus_labelled_pool_and_test_cap(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame([{"sentence": f"m {i}", "label": i % 2} for i in range(30)]).to_parquet(raw / "validation_matched-0.parquet")
    pd.DataFrame([{"sentence": f"mm {i}", "label": i % 2} for i in range(50)]).to_parquet(raw / "validation_mismatched-0.parquet")
    mnli = toy_card(files={"test": "validation_matched-*.parquet", "labelled": "validation_mismatched-*.parquet"})
    meta = prepare_task(mnli, raw, tmp_path / "out", {**PREPARE_PARAMS, "test_max_rows": 20})
    assert meta["rows"] == {"train": 40, "validation": 10, "test": 20}
    assert meta["dropped"]["test"]["over_test_max_rows"] == 10
    assert all(r["text"].startswith("m ") for r in load_split(tmp_path / "out", "test"))
    assert all(r["text"].startswith("mm ") for s in ("train", "validation") for r in load_split(tmp_path / "out", s))
    assert any("train and validation carved from validation_mismatched" in n for n in meta["notes"])


def test_cli_prepare_prints_one_line_and_exits_2_on_bad_input(tmp_path, monkeypatch, capsys):
    save_task_card(toy_card(), tmp_path / "tasks")
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
    save_task_card(toy_card(), tmp_path / "tasks")
    save_task_card(toy_card(name="toy2"), tmp_path / "tasks")
    monkeypatch.setenv("TTLORA_TASKS_DIR", str(tmp_path / "tasks"))
    write_toy(tmp_path / "raw" / "toy")
    write_toy(tmp_path / "raw" / "toy2", n_train=30)
    metas = prepare_all(["toy", "toy2"], tmp_path / "raw", tmp_path / "prepared", PREPARE_PARAMS)
    assert {t: m["rows"]["train"] for t, m in metas.items()} == {"toy": 48, "toy2": 24}
    assert (tmp_path / "prepared" / "toy2" / "meta.json").exists()


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


def test_multiple_choice_prepare_is_deterministic_and_shows_every_option(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    train, test = choice_frame(80), choice_frame(16, offset=1000)
    train.to_parquet(raw / "train.parquet")
    test.to_parquet(raw / "validation.parquet")
    for name, card in (("columns", choice_card()), ("struct", choice_card(choices="choices.text"))):
        first = prepare_task(card, raw, tmp_path / name, PREPARE_PARAMS)
        again = prepare_task(card, raw, tmp_path / f"{name}-again", PREPARE_PARAMS)
        assert first["md5"] == again["md5"] and first["rows"] == {"train": 64, "validation": 16, "test": 16}
        assert first["labels"]["test"] == {"A": 4, "B": 4, "C": 4, "D": 4}
        assert_disjoint(tmp_path / name)
    assert first["md5"] == prepare_task(choice_card(), raw, tmp_path / "c2", PREPARE_PARAMS)["md5"]  # same rows either way
    raws = {row["context"]: row for _, row in pd.concat([train, test]).iterrows()}
    for split in SPLITS:
        for r in load_split(tmp_path / "columns", split):
            source = raws[r["text"].removesuffix(" what sat on the mat")]
            assert r["text_pair"] == " ".join(f"({m}) {source[f'answer{k}']}" for k, m in enumerate("ABCD"))
            assert r["label"] == source["label"]


def test_multiple_choice_unlabelled_file_gives_option_rows(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    choice_frame(80).to_parquet(raw / "train.parquet")
    choice_frame(16, offset=1000).to_parquet(raw / "validation.parquet")
    choice_frame(12, offset=2000).assign(label=-1).to_parquet(raw / "test.parquet")
    card = choice_card(files={"train": "train.parquet", "test": "validation.parquet", "unlabelled": "test.parquet"})
    meta = prepare_task(card, raw, tmp_path / "out", PREPARE_PARAMS)
    table = pd.read_parquet(tmp_path / "out" / "unlabelled.parquet")
    assert meta["rows"]["unlabelled"] == len(table) == 12 and table["text_pair"].str.startswith("(A) the ").all()


NEW_CARDS = {  # task: (options, label names, rows after prepare with the default params)
    "csqa": (5, list("ABCDE"), {"train": 8766, "validation": 975, "test": 1221, "unlabelled": 1140}),
    "winogrande_l": (2, list("AB"), {"train": 9208, "validation": 1024, "test": 1267, "unlabelled": 1767}),
    "socialiqa": (3, list("ABC"), {"train": 31386, "validation": 2000, "test": 1935}),
    "cosmosqa": (4, list("ABCD"), {"train": 2149, "validation": 239, "test": 597, "unlabelled": 2000}),
    "scitail": (None, ["neutral", "entailment"], {"train": 1913, "validation": 213, "test": 1304}),
}


@pytest.mark.parametrize("task", sorted(NEW_CARDS))
def test_real_new_cards_prepare_and_show_every_option(mirror, tmp_path, task):
    if mirror is None:
        pytest.skip("no dataset mirror (TTLORA_DATA_MIRROR or ../shared/datasets)")
    options, names, rows = NEW_CARDS[task]
    card = load_task_card(task)
    meta = prepare_task(card, mirror / card.source, tmp_path / task, {})
    assert meta["rows"] == rows and meta["label_names"] == names
    assert_disjoint(tmp_path / task)
    prepared = [r for s in SPLITS for r in load_split(tmp_path / task, s)]
    if options is None:  # scitail: the plain sentences, never the parse trees
        assert not any(r["text"].startswith("(") or r["text_pair"].startswith("(") for r in prepared)
        return
    assert all(r["text_pair"].count(") ") >= options for r in prepared)
    raw = pd.concat([pd.read_parquet(mirror / card.source / card.files[role])
                     for role in ("train", "test", "labelled") if role in card.files])
    if task == "csqa":  # all five choices reach the model, in the order answerKey counts them
        assert all(list(c["label"]) == list("ABCDE") for c in raw["choices"])
        wanted = {(q, options_text(list(c["text"]))) for q, c in zip(raw["question"], raw["choices"])}
    elif task == "winogrande_l":  # option2 reaches the model too
        wanted = {(s, f"(A) {a} (B) {b}") for s, a, b in zip(raw["sentence"], raw["option1"], raw["option2"])}
    else:
        return
    assert {(r["text"], r["text_pair"]) for r in prepared} <= wanted
