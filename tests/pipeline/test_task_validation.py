"""Staging a new task: everything checked before the project is touched; careless but unambiguous data
registers, and the user hears about every row or file left out."""

from __future__ import annotations

import os
import sys
import types

import pandas as pd
import pytest
import yaml

from tests.pipeline.conftest import project_snapshot
from ttlora_moe.data.prepared import load_split
from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.task_validation import TaskSpec, stage_task

WORDS = ["good", "great", "bad", "awful"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with one task card (``toy``), small prepare params and a folder of sources beside it."""
    root = tmp_path / "project"
    (root / "data" / "tasks").mkdir(parents=True)
    (root / "params.yaml").write_text("tasks: [toy]\nprepare:\n  min_rows: 5\n  validation_max_rows: 60\n")
    (root / "data" / "tasks" / "toy.yaml").write_text(yaml.safe_dump({
        "source": "toy", "text": "sentence", "label": "label", "files": {"train": "train.parquet"},
        "label_names": ["neg", "pos"], "label_values": [0, 1]}))
    monkeypatch.setenv("TTLORA_PROJECT_DIR", str(root))
    for name in ("TTLORA_DATA_DIR", "TTLORA_TASKS_DIR", "TTLORA_PARAMS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "sources").mkdir()
    return root


def rows(n: int = 120, label=lambda i: ["negative", "positive"][i % 4 < 2]) -> list[tuple[str, str]]:
    return [(f"the movie {i} was {WORDS[i % 4]}", label(i)) for i in range(n)]


def stage(project, source, **spec):
    """Stage ``source``; check the project is untouched while staged and after the staging is discarded."""
    before = project_snapshot(project)
    staged = stage_task(TaskSpec(**{"name": "reviews", "source": str(source), "text": "body", "label": "rating", **spec}))
    assert staged.staging.parent == project / "data" / "raw" and staged.raw.is_dir()
    staged.discard()
    assert project_snapshot(project) == before
    return staged


def test_a_careless_csv_registers_with_every_quirk_read_sensibly(project):
    """BOM, CRLF, blank lines, spaces around headers, trailing commas, quoted newlines, an upper-case
    suffix, labels written 1.0/0.0 and a symbolic link to the file."""
    lines = ["\ufeff body , rating ,"] + [f'"{text}\nsecond line",{float(i % 4 < 2)},' for i, (text, _) in enumerate(rows())]
    real = project.parent / "sources" / "Reviews.CSV"
    real.write_text("\r\n\r\n".join(lines) + "\r\n", newline="")
    link = project.parent / "sources" / "link.csv"
    link.symlink_to(real)
    staged = stage(project, link)
    card = staged.card
    assert card.source == str(link) and card.files == {"labelled": "link.csv"}
    assert card.label_names == ["0", "1"] and card.label_values == [0, 1] and card.unlabelled_values == []
    assert sum(staged.meta["rows"].values()) == 120 and staged.notes == []


def test_a_source_inside_the_data_mirror_is_recorded_relative_to_it(project, monkeypatch):
    """Any machine with the mirror finds it; a path elsewhere stays absolute (provenance: DVC carries the data)."""
    mirror = project.parent / "mirror"
    (mirror / "reviews").mkdir(parents=True)
    pd.DataFrame([{"body": t, "rating": r} for t, r in rows()]).to_parquet(mirror / "reviews" / "train.parquet")
    (project.parent / "alias").symlink_to(mirror)
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(project.parent / "alias"))  # reached through a link
    for source in (mirror / "reviews", project.parent / "alias" / "reviews"):
        assert stage(project, source).card.source == "reviews"
    # folder/file inside the mirror has a hub id's shape: recorded absolute, so never read as one
    assert stage(project, mirror / "reviews" / "train.parquet").card.source == str(mirror / "reviews" / "train.parquet")
    monkeypatch.setenv("TTLORA_DATA_MIRROR", str(project.parent / "sources"))
    assert stage(project, mirror / "reviews").card.source == str(mirror / "reviews")


def test_prepared_text_keeps_quoted_newlines(project):
    path = project.parent / "sources" / "quoted.csv"
    pd.DataFrame([{"body": f"{t}\nmore", "rating": r} for t, r in rows()]).to_csv(path, index=False)
    staged = stage_task(TaskSpec(name="reviews", source=str(path), text="body", label="rating"))
    try:
        assert all(r["text"].endswith("\nmore") for r in load_split(staged.staging / "prepared", "train"))
    finally:
        staged.discard()


def test_what_is_dropped_or_kept_is_said(project):
    path = project.parent / "sources" / "hidden.csv"
    data = [(t, "" if i % 10 == 0 else "none" if i % 10 == 1 else r) for i, (t, r) in enumerate(rows())]
    data += [("", "positive"), (data[5][0], data[5][1])]  # an empty input, a repeated row
    pd.DataFrame(data, columns=["body", "rating"]).to_csv(path, index=False)
    with pytest.raises(BadInput, match="12 row\\(s\\) have an empty label in column 'rating'"):
        stage(project, path)
    staged = stage(project, path, unlabelled_values=[""])
    assert staged.card.label_names == ["negative", "none", "positive"] and staged.card.unlabelled_values == [""]
    assert staged.notes == ["label 'none' is kept as a class (pass --unlabelled-values none if it means 'no label')",
                            "dropped 12 row(s) with a label named by --unlabelled-values",
                            "dropped 1 row(s) with an empty input", "dropped 1 row(s) repeated exactly"]
    staged = stage(project, path, unlabelled_values=["", "none"])
    assert staged.card.label_names == ["negative", "positive"] and "dropped 24 row(s)" in staged.notes[0]


def test_a_folder_skips_what_is_not_data_and_says_so(project):
    folder = project.parent / "sources" / "folder"
    (folder / "nested").mkdir(parents=True)
    (folder / "README.md").write_text("about the data")
    os.mkfifo(folder / "pipe")
    pd.DataFrame(rows(), columns=["body", "rating"]).to_parquet(folder / "TRAIN.parquet")
    pd.DataFrame(rows(30), columns=["body", "rating"]).to_csv(folder / "dev.csv", index=False)
    pd.DataFrame(rows(30), columns=["body", "rating"]).to_csv(folder / "extra.csv", index=False)
    staged = stage(project, folder)
    assert staged.card.files == {"train": "TRAIN.parquet", "test": "dev.csv"}
    kinds = "not a .parquet/.csv/.jsonl/.json file"
    assert staged.notes == [f"skipped README.md (a regular file; {kinds})",
                            f"skipped nested (a folder: only files directly in the source folder are read; {kinds})",
                            f"skipped pipe (a named pipe; {kinds})",
                            "extra.csv is not used (train files start with 'train', test files with 'validation', 'dev' or 'test')",
                            "dropped 30 row(s) whose input is also in test (kept there only)"]
    assert staged.meta["rows"]["test"] == 30


def test_train_files_sharing_a_prefix_become_one_pattern(project):
    folder = project.parent / "sources" / "parts"
    folder.mkdir()
    for part in ("a", "b"):
        pd.DataFrame(rows(), columns=["body", "rating"]).assign(body=lambda d, p=part: d["body"] + p).to_csv(
            folder / f"train_{part}.csv", index=False)
    pd.DataFrame(rows(30), columns=["body", "rating"]).to_csv(folder / "test[1].csv", index=False)
    staged = stage(project, folder)
    assert staged.card.files == {"train": "train_*", "test": "test[[]1].csv"}
    assert staged.meta["rows"]["test"] == 30 and staged.meta["rows"]["train"] + staged.meta["rows"]["validation"] == 240


def test_a_hub_source_names_its_files_in_errors(project, monkeypatch):
    class Split:
        def __init__(self, frame):
            self.frame = frame

        def to_parquet(self, path):
            self.frame.to_parquet(path)

    good = pd.DataFrame(rows(), columns=["body", "rating"])
    held_out = pd.DataFrame(rows(30), columns=["body", "rating"]).assign(body=lambda d: "held out " + d["body"])
    splits = {"owner/good": {"train": Split(good), "test": Split(held_out)},
              "owner/bad": {"train": Split(good.drop(columns="rating"))}}
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda name, config=None: splits[name]))
    staged = stage(project, "owner/good")
    assert staged.card.files == {"train": "train-00000-of-00001.parquet", "test": "test-00000-of-00001.parquet"}
    with pytest.raises(BadInput, match="column 'rating' is not in train-00000-of-00001.parquet"):
        stage(project, "owner/bad")


def test_a_class_only_in_the_test_file_is_refused(project):
    folder = project.parent / "sources" / "rare"
    folder.mkdir()
    pd.DataFrame(rows(), columns=["body", "rating"]).to_csv(folder / "train.csv", index=False)
    pd.DataFrame([(f"held out {t}", "odd" if i < 3 else r) for i, (t, r) in enumerate(rows(30))],
                 columns=["body", "rating"]).to_csv(folder / "test.csv", index=False)
    before = project_snapshot(project)
    with pytest.raises(BadInput, match="class\\(es\\) \\['odd'\\] have no row in the train split \\(rows elsewhere: \\{'odd': 3\\}\\)"):
        stage_task(TaskSpec(name="reviews", source=str(folder), text="body", label="rating"))
    assert project_snapshot(project) == before


PLACES = ["bank", "library", "kitchen", "garden"]


def choice_rows(n: int = 120, options: int = 3) -> list[dict]:
    """Questions whose right answer moves through the options (answer ``i % options``, 0-based)."""
    return [{"context": f"story {i}.", "question": f"where is thing {i}?",
             **{f"answer{'ABCD'[c]}": f"the {PLACES[(i + c) % 4]} {i}" for c in range(options)}, "answer": i % options}
            for i in range(n)]


def test_a_multiple_choice_csv_registers_as_a_choice_card_with_every_option_in_the_input(project):
    path = project.parent / "sources" / "quiz.csv"
    pd.DataFrame([{**r, "answer": r["answer"] + 1} for r in choice_rows()]).to_csv(path, index=False)  # labels 1..3
    staged = stage(project, path, text="{context} {question}", label="answer", choices=["answerA", "answerB", "answerC"])
    card = staged.card
    assert (card.kind, card.choices, card.text, card.text_pair) == (
        "multiple_choice", ["answerA", "answerB", "answerC"], "{context} {question}", None)
    assert card.label_names == ["A", "B", "C"] and card.label_values == [1, 2, 3]
    assert staged.notes == ["label 1 is option A, 2 is option B, 3 is option C"]
    staged = stage_task(TaskSpec(name="quiz", source=str(path), text="{context} {question}", label="answer",
                                 choices=["answerA", "answerB", "answerC"]))
    try:
        row = load_split(staged.staging / "prepared", "train")[0]
        i = int(row["text"].split()[1].rstrip("."))
        assert row["text"] == f"story {i}. where is thing {i}?"
        assert row["text_pair"] == " ".join(f"({m}) the {PLACES[(i + c) % 4]} {i}" for c, m in enumerate("ABC"))
        assert row["label"] == i % 3
    finally:
        staged.discard()


def test_a_list_column_of_options_with_letter_labels_registers(project):
    path = project.parent / "sources" / "quiz.jsonl"
    frame = pd.DataFrame([{"question": r["question"], "options": [r["answerA"], r["answerB"], r["answerC"], r["answerD"]],
                           "key": "ABCD"[r["answer"]]} for r in choice_rows(options=4)])
    frame.to_json(path, orient="records", lines=True)
    staged = stage(project, path, text="question", label="key", choices=["options"])
    assert staged.card.choices == "options" and staged.card.text == "{question}"
    assert staged.card.label_names == ["A", "B", "C", "D"] and staged.card.label_values == ["A", "B", "C", "D"]
    frame.loc[3, "options"] = frame.loc[3, "options"][:3]
    frame.to_json(path, orient="records", lines=True)
    with pytest.raises(BadInput, match="offer 3, 4 options in 'options'"):
        stage(project, path, text="question", label="key", choices=["options"])


def test_positions_that_may_count_from_0_or_1_are_asked_for(project):
    path = project.parent / "sources" / "quiz.csv"
    pd.DataFrame([{**r, "answer": 1 + r["answer"] % 2} for r in choice_rows()]).to_csv(path, index=False)  # 1, 2 of 3
    spec = {"text": "question", "label": "answer", "choices": ["answerA", "answerB", "answerC"]}
    with pytest.raises(BadInput, match="may count the 3 options from 0 or from 1.*--choice-labels 0,1,2 or --choice-labels 1,2,3"):
        stage(project, path, **spec)
    assert stage(project, path, **spec, choice_labels=["0", "1", "2"]).card.label_values == ["0", "1", "2"]
    with pytest.raises(BadInput, match="labels \\['2'\\] in column 'answer' mark none of the 3 options"):
        stage(project, path, **spec, choice_labels=["0", "1", "x"])
    with pytest.raises(BadInput, match="must give 3 distinct values"):
        stage(project, path, **spec, choice_labels=["0", "1"])


@pytest.mark.parametrize("spec, error", [
    ({"text_pair": "context"}, "--text-pair and --choices both give the second input"),
    ({"label_names": ["x", "y", "z"]}, "--label-names with --choices"),
    ({"choices": ["answerA", "answer"]}, "--label and --choices both name the column 'answer'"),
    ({"choices": ["answerA", "answerA"]}, "must name distinct columns"),
    ({"choices": []}, "must name distinct columns"),
    ({"choices": None, "choice_labels": ["1", "2"]}, "--choice-labels without --choices"),
    ({"text": "{question} {answerB}"}, "--text and --choices both name the column 'answerB'"),
    ({"text": "{question:>5}"}, "not a column name"),
    ({"choices": ["answerA", "answerZ"]}, "column 'answerZ' is not in quiz.csv"),
    ({"label": "context"}, "labels .* are neither the option letters A, B, C nor positions 0..2 or 1..3"),
])
def test_bad_multiple_choice_options_are_one_line_each(project, spec, error):
    path = project.parent / "sources" / "quiz.csv"
    pd.DataFrame(choice_rows()).to_csv(path, index=False)
    before = project_snapshot(project)
    with pytest.raises(BadInput, match=error):
        stage_task(TaskSpec(**{"name": "quiz", "source": str(path), "text": "question", "label": "answer",
                               "choices": ["answerA", "answerB", "answerC"], **spec}))
    assert project_snapshot(project) == before
