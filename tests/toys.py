"""Toy data and toy experts that many tests build: tasks in a fake mirror with their cards, and experts with
random (non-zero) cores and heads, enough to test routing, stacking and bookkeeping exactly."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import torch
import yaml

from ttlora_moe.data.cards import TaskCard
from ttlora_moe.experts.artifact import save_expert
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.experts.classifier import SequenceClassifier
from ttlora_moe.tt.config import TTLoRAConfig
from ttlora_moe.tt.inject import attach_tt_lora

WORDS = ["good", "great", "bad", "awful"]


def write_toy_task(root: Path, name: str, template: str = "the movie {i} was {w}", rows: int = 240,
                   test_rows: int = 40, mirror: Path | None = None, cards: Path | None = None) -> Path:
    """A binary task ``name`` in a mirror (``train.parquet`` + ``validation.parquet``) and its card.

    ``template`` (with ``{i}`` and ``{w}``) makes the task's inputs recognisable; the label is 1 for
    the first two of the four ``WORDS``. Defaults: mirror ``root/mirror``, cards ``root/data/tasks``.
    Returns the mirror folder of the task.
    """
    folder = Path(mirror or root / "mirror") / name
    folder.mkdir(parents=True)
    for file, offset, n in (("train.parquet", 0, rows), ("validation.parquet", 10_000, test_rows)):
        pd.DataFrame([{"sentence": template.format(i=offset + i, w=WORDS[i % 4]), "label": int(i % 4 < 2)}
                      for i in range(n)]).to_parquet(folder / file)
    cards = Path(cards or root / "data" / "tasks")
    cards.mkdir(parents=True, exist_ok=True)
    (cards / f"{name}.yaml").write_text(yaml.safe_dump({
        "source": name, "files": {"train": "train.parquet", "test": "validation.parquet"}, "text": "sentence",
        "label": "label", "label_names": ["neg", "pos"], "label_values": [0, 1]}))
    return folder


def make_random_expert(directory: Path, ref: str, task: str, seed: int, labels: list[str] | None = None,
                       metric: str = "accuracy", layers_from: int = 0, bias_scale: float = 0.1,
                       target_modules: list[str] | None = None, options: bool = False) -> Path:
    """An expert for ``task`` with random cores (from ``seed``) and a random head bias, saved to ``directory``
    (``target_modules``: the layers it adapts; default the base's query and value; ``options``: a head that
    scores multiple-choice options)."""
    base = load_base_model(ref)
    tt = TTLoRAConfig(rank=2, alpha=4.0, layers_from=layers_from, target_modules=target_modules or [])
    attach_tt_lora(base.model, tt, seed=seed)
    labels = labels or ["neg", "pos"]
    classifier = SequenceClassifier(base.model, len(labels), base.pooling, "trainable", seed, options=options)
    with torch.no_grad():
        classifier.head.bias.normal_(0, bias_scale, generator=torch.Generator().manual_seed(seed))
    meta = {"task": task, "kind": "ttlora", "label_names": labels, "metric": metric, "head": "options" if options else "pooled",
            "base_model": {"ref": ref, "fingerprint": base.fingerprint, "model_type": base.model_type,
                           "hidden_size": base.hidden_size},
            "tt": tt.to_dict(), "max_length": 32, "metrics": {"test": {"accuracy": 0.5}}}
    return save_expert(directory, classifier, meta)


# --- four toy tasks of different shapes, for the mixture and the bundle ---------------------------

MOE_ROUTER = {"kind": "mlp", "hidden": 16, "lr": 0.01, "max_epochs": 15, "patience": 4, "train_per_task": 60,
          "validation_per_task": 20, "false_abstain_rate": 0.05,
          "features": {"layers": "all", "pooling": ["mean", "max"], "segment_layers": "all"}}


MOE_BUNDLE = {"test_per_task": 16, "out_of_scope_rows": 12, "batch_size": 8}


# name: (labels, pair?, metric, text maker)
MOE_TASKS = {
    "senti": (["neg", "pos"], False, "accuracy",
              lambda i: ({"sentence": f"the {['movie', 'film', 'plot'][i % 3]} {i} was {['good', 'bad', 'great', 'awful'][i % 4]}"},
                         int(i % 4 in (0, 2)))),
    "nli": (["entail", "neutral", "contra"], True, "accuracy",
            lambda i: ({"premise": f"premise the {['cat', 'dog'][i % 2]} {i} sat on the mat",
                        "hypothesis": f"hypothesis the {['cat', 'dog'][i % 2]} is {['happy', 'sad', 'red'][i % 3]}"}, i % 3)),
    "quest": (["no", "yes"], False, "mcc",
              lambda i: ({"sentence": f"{['what', 'why', 'who', 'where'][i % 4]} is the {i} {['answer', 'question'][i % 2]}"},
                         i % 2)),
    "extra": (["no", "yes"], True, "f1",
              lambda i: ({"premise": f"question {['what', 'who'][i % 2]} is {i} it", "hypothesis": f"answer {['yes', 'no'][i % 2]} it is"},
                         i % 2)),
}


def moe_card(name: str) -> dict:
    labels, pair, metric, _ = MOE_TASKS[name]
    card = {"source": name, "files": {"train": "train.parquet", "test": "validation.parquet"},
            "text": "premise" if pair else "sentence", "label": "label", "label_names": labels,
            "label_values": list(range(len(labels))), "metric": metric}
    if pair:
        card["text_pair"] = "hypothesis"
    return card


def moe_rows(task: str, n: int, offset: int = 100) -> list[dict]:
    labels, pair, _, make = MOE_TASKS[task]
    out = []
    for i in range(offset, offset + n):
        fields, label = make(i)
        if pair:
            out.append({"text": fields["premise"], "text_pair": fields["hypothesis"], "label": label})
        else:
            out.append({"text": fields["sentence"], "text_pair": None, "label": label})
    return out


def router_rows(env, *tasks: str) -> int:
    """Rows of router training + validation features for ``tasks`` (the capped prepared splits)."""
    from ttlora_moe.data.prepared import load_split

    prepared = env["root"] / "data" / "prepared"
    return sum(min(MOE_ROUTER["train_per_task"], len(load_split(prepared / t, "train")))
               + min(MOE_ROUTER["validation_per_task"], len(load_split(prepared / t, "validation"))) for t in tasks)


def make_moe_expert(directory: Path, ref: str, task: str, seed: int, target_modules: list[str] | None = None) -> Path:
    """A random expert for one of :data:`MOE_TASKS`, with that task's labels and metric."""
    labels, _, metric, _ = MOE_TASKS[task]
    return make_random_expert(directory, ref, task, seed, labels, metric, target_modules=target_modules)


# --- small helpers of the data, expert and single-pass tests ---------------------------------------

FILLER = "the a movie film plot actor it this that is was very really".split()


def toy_rows(n: int, seed: int) -> list[dict]:
    """Sentiment-like toy data: the label is whether 'good'/'great' or 'bad'/'awful' occurs."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(["good", "great"] if label else ["bad", "awful"])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "text_pair": None, "label": label})
    return rows


class Collate:
    def __init__(self, tokenizer, fail_after: int | None = None):
        self.tokenizer, self.calls, self.fail_after = tokenizer, 0, fail_after

    def __call__(self, rows):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        enc = self.tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([r["label"] for r in rows])}


def make_classifier(ref, seed=0, head_mode="trainable"):
    base = load_base_model(ref)
    attach_tt_lora(base.model, TTLoRAConfig(rank=2, alpha=4.0), seed=seed)
    return base, SequenceClassifier(base.model, 2, base.pooling, head_mode, seed)


PREPARE_PARAMS = {"seed": 1, "validation_fraction": 0.2, "validation_max_rows": 1000, "carve_test_fraction": 0.25,
          "test_max_rows": 1000, "min_rows": 2}


def toy_card(**kw) -> TaskCard:
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


def add_pair_task(project: Path) -> None:
    """A second toy task (sentence pairs) next to the project fixture's ``toy``."""
    folder = project / "mirror" / "pairs"
    folder.mkdir(parents=True)
    for file, n in (("train.parquet", 300), ("validation.parquet", 40)):
        pd.DataFrame([{"premise": f"premise the cat {i} sat on the mat", "hypothesis": f"the dog is {['happy', 'sad'][i % 2]}",
                       "label": i % 2} for i in range(n)]).to_parquet(folder / file)
    (project / "tasks" / "pairs.yaml").write_text(yaml.safe_dump({
        "source": "pairs", "files": {"train": "train.parquet", "test": "validation.parquet"}, "text": "premise",
        "text_pair": "hypothesis", "label": "label", "label_names": ["no", "yes"], "label_values": [0, 1],
        "metric": "accuracy"}))


MIXED_ROWS = [
    {"text": "the movie was good", "text_pair": None},
    {"text": "the cat sat on the mat", "text_pair": "the dog is happy"},
    {"text": "what is the answer", "text_pair": None},
    {"text": "premise the dog sat", "text_pair": "hypothesis the cat is sad"},
    {"text": "the plot was really awful and boring", "text_pair": None},
    {"text": "why is this a question", "text_pair": None},
    {"text": "a red cat", "text_pair": "a blue dog"},
]


SHORT_MIXED_ROWS = [
    {"text": "the movie was good", "text_pair": None},
    {"text": "what is a cat", "text_pair": "the cat sat on the mat"},
    {"text": "bad", "text_pair": None},
    {"text": "premise true", "text_pair": "hypothesis false maybe"},
]


# --- a toy multiple-choice task ---------------------------------------------------------------------

CHOICE_WORDS = ["cat", "dog", "mat", "red", "blue", "green", "happy", "sad"]


def choice_frame(n: int, options: int = 4, offset: int = 0) -> pd.DataFrame:
    """Multiple-choice rows: ``context``, ``question``, answers ``answer0..`` and the ``label`` (the
    position of the answer naming the context's word); also the answers as a struct column ``choices``."""
    rows = []
    for i in range(offset, offset + n):
        word = CHOICE_WORDS[i % len(CHOICE_WORDS)]
        others = [w for w in CHOICE_WORDS if w != word]
        label = (i + i // len(CHOICE_WORDS)) % options
        answers = [f"the {word}" if k == label else f"the {others[(i + k) % len(others)]}" for k in range(options)]
        rows.append({"context": f"premise {i} the {word} sat on the mat", "question": "what sat on the mat",
                     **{f"answer{k}": a for k, a in enumerate(answers)},
                     "choices": {"label": [chr(65 + k) for k in range(options)], "text": answers}, "label": label})
    return pd.DataFrame(rows)


def choice_card(**kw) -> TaskCard:
    """The card of :func:`choice_frame` data with four options in columns (``choices=...`` for others)."""
    base = {"name": "quiz", "source": "quiz", "kind": "multiple_choice", "text": "{context} {question}",
            "text_pair": None, "choices": [f"answer{k}" for k in range(4)], "label": "label",
            "label_names": list("ABCD"), "label_values": [0, 1, 2, 3], "metric": "accuracy",
            "files": {"train": "train.parquet", "test": "validation.parquet"}}
    return TaskCard(**{**base, **kw})


def add_choice_task(project: Path, rows: int = 240) -> None:
    """The toy multiple-choice task ``quiz`` (four options) next to the project fixture's ``toy``."""
    folder = project / "mirror" / "quiz"
    folder.mkdir(parents=True)
    choice_frame(rows).to_parquet(folder / "train.parquet")
    choice_frame(40, offset=10_000).to_parquet(folder / "validation.parquet")
    card = choice_card()
    (project / "tasks" / "quiz.yaml").write_text(yaml.safe_dump({
        "source": card.source, "kind": card.kind, "files": card.files, "text": card.text, "choices": card.choices,
        "label": card.label, "label_names": card.label_names, "label_values": card.label_values}))
