"""Pfeiffer bottleneck adapters per task and AdapterFusion over them (the paper's `adapters` baselines).

Runs inside `.venv-adapters` (transformers 4.57 + adapters 1.3.0; see benchmarks/adapters_env.sh)
on the project's prepared data (`data/prepared/<task>/{train,validation,test}.parquet`) and task
cards (`data/tasks/<task>.yaml`), reading them directly: nothing here imports `ttlora_moe`.

Stage `pfeiffer`, for each task: `AutoAdapterModel` + `add_adapter(task, "seq_bn")` (Pfeiffer: a
bottleneck after the feed-forward block, reduction factor 16) + `train_adapter(task)` +
`add_classification_head(task, C)`: the library's default head (2 layers, hidden->hidden->C, tanh,
on the **CLS token**: the library default for BERT, kept as the paper kept it; our experts
mean-pool). The head is added after `train_adapter`, so it trains too, as in the paper. The
budget is our experts': the same seeded subsample of train (`--samples`, seed 0, the rows
`ttlora_moe.data.load_split` picks), the same epoch shuffles, AdamW with 6 % linear warm-up then
linear decay, gradient clipping at 1.0, validation `--evals-per-epoch` times per epoch on the same
`--eval-samples` validation rows with the best state kept (accuracy, then loss). Evaluated on the
whole test split with the task metric; the accuracy on the task's mixed-test-set rows (below,
when `--mixed-rows` is given) is taken from the same predictions. With `--adapters-dir` the adapter and its head are saved to
`<adapters-dir>/<task>/` as safetensors (the library's `save_adapter`), with the result and its
budget (every training setting, the base model, an MD5 of the task's data) in `pfeiffer.json`;
`--resume` reuses such a folder instead of retraining when the budget is the same.

Stage `all` then adds AdapterFusion: one model, the saved adapters loaded without their heads,
`add_adapter_fusion(Fuse(*tasks))` with the library's default fusion config ("dynamic"),
`train_adapter_fusion`, and one shared classification head with max C (= 3) classes: the paper's
mixed mode, where every task's class ids share the same output units. Trained for
`--fusion-epochs` at `--fusion-lr` (paper: 1 epoch, 5e-5, batch 8; HF Trainer defaults otherwise:
AdamW, no warm-up, linear decay, clipping at 1.0) on a task-balanced mix: `--fusion-samples`
seeded-sampled training rows of each task. Evaluated on the **mixed test set**: for each task the
rows of `test.parquet` listed in `--mixed-rows` (a JSON file `{task: [row index, ...]}`;
`fusion_vs_moe` writes the rows our bundle evaluation scores), reporting mixed accuracy (all rows
pooled) and per-task accuracy.

    .venv-adapters/bin/python benchmarks/adapters_baselines/train.py --model MODEL_DIR \
        --data data/prepared --cards data/tasks --out results.json [--stage all|pfeiffer] [--adapters-dir DIR --resume] ...

Progress goes to stderr (tqdm); the JSON result goes to `--out`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from sklearn.metrics import matthews_corrcoef  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

TASKS = ["mnli", "cola", "rte", "sst2", "qnli", "qqp"]
COLUMNS = ["text", "text_pair", "label"]
SPLITS = ("train", "validation", "test")
RESULT_FILE = "pfeiffer.json"  # next to the saved adapter: its result and budget
ADAPTER_FILES = ("adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors")


# ----------------------------------------------------------------------------------------- data

def read_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(str(path), columns=COLUMNS).to_pylist()


def seeded_subset(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """The rows `ttlora_moe.data.load_split(..., max_samples=n, seed=seed)` returns (file order kept)."""
    if n is None or len(rows) <= n:
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]


def load_card(cards: Path, task: str) -> dict[str, Any]:
    card = yaml.safe_load((cards / f"{task}.yaml").read_text())
    return {"num_labels": len(card["label_names"]), "metric": card.get("metric", "accuracy"),
            "label_names": card["label_names"]}


class Collate:
    """Tokenise rows (single texts, pairs, or a mix of both) with dynamic padding."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        kw = {"truncation": True, "max_length": self.max_length}
        texts, pairs = [r["text"] for r in rows], [r.get("text_pair") for r in rows]
        if all(p is None for p in pairs):
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", **kw)
        elif all(p is not None for p in pairs):
            enc = self.tokenizer(texts, pairs, padding=True, return_tensors="pt", **kw)
        else:
            single = [self.tokenizer(t, p, **kw) if p is not None else self.tokenizer(t, **kw) for t, p in zip(texts, pairs)]
            enc = self.tokenizer.pad(single, return_tensors="pt")
        # Everything the tokenizer returns (BERT: token_type_ids too), as a library user would pass it.
        out = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out["labels"] = torch.tensor([int(r["label"]) for r in rows])
        return out


# -------------------------------------------------------------------------------------- metrics

def task_metrics(labels: list[int], preds: list[int], metric: str) -> dict[str, float]:
    n = max(1, len(labels))
    out = {"accuracy": sum(int(a == b) for a, b in zip(labels, preds)) / n}
    if metric == "f1":  # binary F1 of class 1 (a shared fusion head may also predict a class 2)
        tp = sum(1 for a, b in zip(labels, preds) if a == 1 and b == 1)
        fp = sum(1 for a, b in zip(labels, preds) if a != 1 and b == 1)
        fn = sum(1 for a, b in zip(labels, preds) if a == 1 and b != 1)
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    elif metric == "mcc":
        out["mcc"] = float(matthews_corrcoef(labels, preds)) if len(set(labels)) > 1 else 0.0
    return out


@torch.inference_mode()
def predict(model, rows: list[dict], collate: Collate, batch_size: int = 64, desc: str = "eval") -> tuple[list[int], float]:
    """Arg-max predictions in row order and the mean cross-entropy (batches sorted by length for speed)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["text"]) + len(rows[i].get("text_pair") or ""))
    preds, loss_sum = [0] * len(rows), 0.0
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True):
        ids = order[start:start + batch_size]
        batch = collate([rows[i] for i in ids])
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        for i, p in zip(ids, logits.argmax(-1).tolist()):
            preds[i] = p
    model.train(was_training)
    return preds, loss_sum / max(1, len(rows))


# ------------------------------------------------------------------------------------- training

def fit(model, rows: list[dict], collate: Collate, *, epochs: int, batch_size: int, lr: float, warmup_ratio: float,
        seed: int, val_rows: list[dict] | None = None, metric: str = "accuracy", evals_per_epoch: int = 0,
        desc: str = "train") -> dict[str, Any]:
    """Train the parameters that require grad (AdamW, linear warm-up + decay, clipping at 1.0).

    With ``val_rows`` and ``evals_per_epoch`` the best state (validation accuracy, then loss) is
    kept, as our expert training does; otherwise the final state is kept.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    total = steps_per_epoch * epochs
    warmup = int(total * warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    eval_points = {min(steps_per_epoch, round(steps_per_epoch * (i + 1) / evals_per_epoch))
                   for i in range(evals_per_epoch)} if (val_rows and evals_per_epoch) else set()
    best_score, best_step, best_state, history = (-1.0, -math.inf), 0, None, []
    step, seen = 0, 0
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
    for epoch in range(epochs):
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 1009 + epoch)).tolist()
        run_loss, run_n = 0.0, 0
        for b in range(steps_per_epoch):
            torch.manual_seed(seed * 1_000_003 + step)  # dropout masks, reproducible per step
            batch = collate([rows[i] for i in order[b * batch_size:(b + 1) * batch_size]])
            labels = batch.pop("labels")
            loss = nn.functional.cross_entropy(model(**batch).logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(labels)
            run_loss, run_n = run_loss + float(loss) * len(labels), run_n + len(labels)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{run_loss / run_n:.3f}")
            if b + 1 in eval_points:
                preds, val_loss = predict(model, val_rows, collate, desc="val")
                scores = task_metrics([r["label"] for r in val_rows], preds, metric)
                history.append({"step": step, "epoch": round(step / steps_per_epoch, 3), "train_loss": run_loss / run_n,
                                **{f"val_{k}": v for k, v in scores.items()}, "val_loss": val_loss})
                bar.write(f"{desc} step {step}: val_accuracy {scores['accuracy']:.4f} val_loss {val_loss:.4f}", file=sys.stderr)
                run_loss, run_n = 0.0, 0
                if (scores["accuracy"], -val_loss) > best_score:
                    best_score, best_step = (scores["accuracy"], -val_loss), step
                    best_state = {n: p.detach().clone() for n, p in params.items()}
    bar.close()
    seconds = time.perf_counter() - start
    if best_state is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(best_state[n])
    return {"steps": step, "samples_seen": seen, "seconds": round(seconds, 2),
            "samples_per_s": round(seen / max(seconds, 1e-9), 2), "best_step": best_step or step, "history": history}


def count(model, predicate) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if predicate(n, p))


def load_model(path: str):
    from adapters import AutoAdapterModel

    return AutoAdapterModel.from_pretrained(path)


def data_md5(prepared: Path) -> str:
    """MD5 over a task's train, validation and test files: saved adapters are reused only on the same data."""
    digest = hashlib.md5()
    for split in SPLITS:
        digest.update((prepared / f"{split}.parquet").read_bytes())
    return digest.hexdigest()


def budget(args, task: str) -> dict[str, Any]:
    """Everything that shapes a trained Pfeiffer adapter: a saved one is reused by ``--resume`` only if equal."""
    keys = ("adapter_config", "samples", "eval_samples", "evals_per_epoch", "epochs", "batch_size", "max_length",
            "lr", "warmup_ratio", "seed")
    return {k: getattr(args, k) for k in keys} | {"model": str(args.model), "data_md5": data_md5(args.data / task)}


def saved_row(task: str, args) -> dict[str, Any] | None:
    """The result of an adapter already saved in ``--adapters-dir`` with this budget (``--resume``), else None."""
    folder = args.adapters_dir / task if args.adapters_dir else None
    if not (args.resume and folder and all((folder / f).exists() for f in (RESULT_FILE, *ADAPTER_FILES))):
        return None
    row = json.loads((folder / RESULT_FILE).read_text())
    if row.get("budget") != budget(args, task):
        print(f"== pfeiffer {task}: {folder} was trained with another budget: retraining", file=sys.stderr)
        return None
    print(f"== pfeiffer {task}: reusing {folder} (--resume, same budget)", file=sys.stderr)
    return row


def with_mixed_score(row: dict[str, Any], labels: list[int], indices: list[int] | None) -> dict[str, Any]:
    """Add the accuracy on this task's mixed-test-set rows (``indices`` into the test split), when given."""
    if indices is None:
        return row
    preds = row["test_predictions"]
    picked = task_metrics([labels[i] for i in indices], [preds[i] for i in indices], "accuracy")
    return row | {"mixed_test_rows": len(indices), "mixed_test_accuracy": picked["accuracy"]}


def train_pfeiffer(task: str, args, tokenizer) -> dict[str, Any]:
    """Train (or, with ``--resume``, reuse) the task's Pfeiffer adapter + head; test it on the whole test split."""
    test_rows = read_rows(args.data / task / "test.parquet")
    row = saved_row(task, args) or fit_pfeiffer(task, args, tokenizer, test_rows)
    return with_mixed_score(row, [r["label"] for r in test_rows], (args.mixed or {}).get(task))


def fit_pfeiffer(task: str, args, tokenizer, test_rows: list[dict]) -> dict[str, Any]:
    """Train the task's adapter and head on the budget, test them, save them (with the result) if asked."""
    card = load_card(args.cards, task)
    prepared = args.data / task
    train_rows = seeded_subset(read_rows(prepared / "train.parquet"), args.samples, args.seed)
    val_rows = seeded_subset(read_rows(prepared / "validation.parquet"), args.eval_samples, args.seed)
    collate = Collate(tokenizer, args.max_length)

    torch.manual_seed(args.seed)
    model = load_model(args.model)
    model.add_adapter(task, config=args.adapter_config)
    model.train_adapter(task)
    model.add_classification_head(task, num_labels=card["num_labels"])  # after train_adapter: trainable
    head = count(model, lambda n, p: n.startswith(f"heads.{task}."))
    adapter = count(model, lambda n, p: p.requires_grad and not n.startswith("heads."))
    print(f"== pfeiffer {task}: {len(train_rows)} train rows, adapter {adapter:,} + head {head:,} trainable", file=sys.stderr)

    result = fit(model, train_rows, collate, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 warmup_ratio=args.warmup_ratio, seed=args.seed, val_rows=val_rows, metric=card["metric"],
                 evals_per_epoch=args.evals_per_epoch, desc=f"pfeiffer {task}")
    preds, _ = predict(model, test_rows, collate, desc=f"test {task}")
    test = task_metrics([r["label"] for r in test_rows], preds, card["metric"])
    row = {
        "task": task, "method": "pfeiffer", "metric": card["metric"], "num_labels": card["num_labels"],
        "test_metric": test.get(card["metric"], test["accuracy"]), "test_accuracy": test["accuracy"],
        "test_rows": len(test_rows), "adapter_params": adapter, "head_params": head, "trainable_params": adapter + head,
        "train_rows": len(train_rows), "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
        "train_seconds": result["seconds"], "train_samples_per_s": result["samples_per_s"],
        "best_step": result["best_step"], "steps": result["steps"], "history": result["history"],
        "test_predictions": preds, "budget": budget(args, task),
    }
    if args.adapters_dir:
        save_pfeiffer(model, task, row, args.adapters_dir / task)
    print(f"== pfeiffer {task}: test {card['metric']} {row['test_metric']:.4f} accuracy {test['accuracy']:.4f} "
          f"({result['samples_per_s']} samples/s)", file=sys.stderr, flush=True)
    return row


def save_pfeiffer(model, task: str, row: dict[str, Any], folder: Path) -> None:
    """Adapter + head as safetensors (the library's own save_adapter), then the result file, written last.

    The result file marks a complete save: it is removed first, so a save cut short is never reused.
    """
    (folder / RESULT_FILE).unlink(missing_ok=True)
    model.save_adapter(str(folder), task, with_head=True, use_safetensors=True)
    (folder / RESULT_FILE).write_text(json.dumps(row, indent=2) + "\n")


def train_fusion(tasks: list[str], args, tokenizer) -> dict[str, Any]:
    from adapters.composition import Fuse

    cards = {t: load_card(args.cards, t) for t in tasks}
    num_labels = max(c["num_labels"] for c in cards.values())
    mix: list[dict] = []
    for t in tasks:
        rows = seeded_subset(read_rows(args.data / t / "train.parquet"), args.fusion_samples, args.seed)
        mix += [{**r, "task": t} for r in rows]
    tests = {}
    for t in tasks:
        test_rows = read_rows(args.data / t / "test.parquet")
        tests[t] = [test_rows[i] for i in args.mixed[t]]
    collate = Collate(tokenizer, args.max_length)

    torch.manual_seed(args.seed)
    model = load_model(args.model)
    for t in tasks:
        model.load_adapter(str(args.adapters_dir / t), load_as=t, with_head=False, set_active=False, use_safetensors=True)
    fuse = Fuse(*tasks)
    model.add_adapter_fusion(fuse)  # the library default fusion config ("dynamic")
    model.train_adapter_fusion(fuse)
    model.add_classification_head("fusion", num_labels=num_labels)  # one shared head: the paper's mixed mode
    model.active_head = "fusion"
    fusion_params = count(model, lambda n, p: "adapter_fusion_layer" in n)
    head = count(model, lambda n, p: n.startswith("heads.fusion."))
    trainable = count(model, lambda n, p: p.requires_grad)
    adapters_total = count(model, lambda n, p: any(f"adapters.{t}." in n for t in tasks) and "adapter_fusion_layer" not in n)
    print(f"== fusion over {tasks}: {len(mix)} mixed train rows; fusion {fusion_params:,} + head {head:,} trainable "
          f"({trainable:,} requires_grad); adapters {adapters_total:,} frozen", file=sys.stderr)

    result = fit(model, mix, collate, epochs=args.fusion_epochs, batch_size=args.fusion_batch_size, lr=args.fusion_lr,
                 warmup_ratio=0.0, seed=args.seed, desc="fusion")
    per_task, correct, total = {}, 0, 0
    for t in tasks:
        labels = [r["label"] for r in tests[t]]
        preds, _ = predict(model, tests[t], collate, desc=f"mixed test {t}")
        m = task_metrics(labels, preds, cards[t]["metric"])
        per_task[t] = {"rows": len(labels), "accuracy": m["accuracy"], "metric": cards[t]["metric"],
                       "metric_value": m.get(cards[t]["metric"], m["accuracy"]),
                       "out_of_range_predictions": sum(p >= cards[t]["num_labels"] for p in preds)}
        correct += round(m["accuracy"] * len(labels))
        total += len(labels)
        print(f"== fusion {t}: accuracy {m['accuracy']:.4f} on {len(labels)} rows", file=sys.stderr, flush=True)
    return {
        "tasks": tasks, "fusion_config": "dynamic", "head_classes": num_labels,
        "mixed_accuracy": correct / max(1, total), "mixed_rows": total,
        "macro_accuracy": sum(r["accuracy"] for r in per_task.values()) / len(per_task),
        "per_task": per_task, "fusion_params": fusion_params, "head_params": head, "trainable_params": trainable,
        "adapter_params_total": adapters_total, "total_added_params": adapters_total + fusion_params + head,
        "train_rows": len(mix), "rows_per_task": {t: sum(r["task"] == t for r in mix) for t in tasks},
        "lr": args.fusion_lr, "epochs": args.fusion_epochs, "batch_size": args.fusion_batch_size,
        "train_seconds": result["seconds"], "train_samples_per_s": result["samples_per_s"], "steps": result["steps"],
        "mixed_rows_per_task": {t: len(rows) for t, rows in tests.items()},
    }


def rows_or_all(value: str) -> int | None:
    """A row count for argparse: a positive integer, or ``all`` (None: no subsample)."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}")
    return int(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="base model folder (all-MiniLM-L6-v2's <pkg>/model)")
    parser.add_argument("--data", type=Path, required=True, help="prepared data root: <data>/<task>/{train,validation,test}.parquet")
    parser.add_argument("--cards", type=Path, required=True, help="task cards folder: <cards>/<task>.yaml")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--stage", choices=["all", "pfeiffer"], default="all",
                        help="pfeiffer: the per-task adapters only; all: then AdapterFusion over them")
    parser.add_argument("--adapters-dir", type=Path, default=None,
                        help="save the per-task adapters (+ heads, + result) here (default for --stage all: a temporary folder)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse adapters already saved in --adapters-dir with the same budget and data instead of retraining")
    parser.add_argument("--adapter-config", default="seq_bn", help="adapters config name (seq_bn = Pfeiffer)")
    parser.add_argument("--samples", type=rows_or_all, default=4000, help="training rows per task (seeded subsample; all: every row)")
    parser.add_argument("--eval-samples", type=rows_or_all, default=1000,
                        help="validation rows per task for best-state selection (all: every row)")
    parser.add_argument("--evals-per-epoch", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4, help="Pfeiffer adapters and their heads (paper: 1e-4)")
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--fusion-samples", type=int, default=1000, help="training rows per task in the fusion mix")
    parser.add_argument("--fusion-epochs", type=int, default=1)
    parser.add_argument("--fusion-lr", type=float, default=5e-5)
    parser.add_argument("--fusion-batch-size", type=int, default=8, help="paper: 8")
    parser.add_argument("--mixed-rows", type=Path, default=None,
                        help="JSON {task: [test row index, ...]}: the mixed test set (required by --stage all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    args.mixed = read_mixed_rows(parser, args)
    return args


def read_mixed_rows(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, list[int]] | None:
    """The ``--mixed-rows`` file, checked against the tasks (an argparse error, not a traceback, when wrong)."""
    if args.mixed_rows is None:
        if args.stage == "all":
            parser.error("--stage all needs --mixed-rows (the mixed test set AdapterFusion is scored on)")
        return None
    try:
        mixed = json.loads(args.mixed_rows.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"--mixed-rows {args.mixed_rows}: {exc}")
    missing = [t for t in args.tasks if t not in mixed]
    if missing:
        parser.error(f"--mixed-rows {args.mixed_rows} lists no rows for {', '.join(missing)}")
    return {t: [int(i) for i in mixed[t]] for t in args.tasks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import adapters
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    payload: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "adapters": adapters.__version__},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "mixed"},
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="pfeiffer-") as tmp:
        if args.adapters_dir is None and args.stage == "all":  # the fusion stage loads the adapters from disk
            args.adapters_dir = Path(tmp)
        if args.adapters_dir:
            args.adapters_dir.mkdir(parents=True, exist_ok=True)
        payload["pfeiffer"] = [train_pfeiffer(t, args, tokenizer) for t in args.tasks]
        if args.stage == "all":
            payload["fusion"] = train_fusion(args.tasks, args, tokenizer)
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"== wrote {args.out} ({payload['wall_seconds']} s)", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
