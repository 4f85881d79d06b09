"""Shared benchmark plumbing: timing (warm-up, repeats, median), machine facts, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ttlora_moe.errors import BadInput

RESULTS = Path(os.environ.get("TTLORA_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def run_benchmark(main: Callable[[list[str] | None], Any]) -> None:
    """Run a benchmark's ``main`` as a command: bad input (an absent device, no data) is one ``error:``
    line on stderr and exit code 2, as for ``ttlora-moe``."""
    try:
        main(None)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def kept_models_dir(kind: str, quick: bool) -> Path:
    """Where benchmarks keep the ``kind`` of models they train, for reuse: ``<outputs>/<kind>/{quick,full}``.

    ``<outputs>`` is ``TTLORA_BENCH_OUTPUTS``, default the project's ``outputs/``.
    """
    outputs = Path(os.environ.get("TTLORA_BENCH_OUTPUTS", Path(__file__).resolve().parents[1] / "outputs"))
    return outputs / kind / ("quick" if quick else "full")


def median_seconds(fn: Callable[[], Any], warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(runners: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                      seed: int = 0) -> dict[str, list[float]]:
    """Seconds of each callable in each of ``rounds`` rounds: one call of each per round, in an order shuffled
    anew each round (seeded, so that no callable always runs right after a given one), after ``warmup``
    calls each.

    Interleaving puts every method under the same drift of a shared, noisy machine, so their ratios
    hold even when the absolute times move.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    order, rng = list(runners), random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(median_seconds(runners[name], warmup=0, repeats=1))
    return times


def interleaved_medians(runners: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable over :func:`interleaved_times`' rounds."""
    return {name: statistics.median(t) for name, t in interleaved_times(runners, rounds, warmup).items()}


def paired_ratios(times: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Each callable's time over ``reference``'s, as the median over rounds of the ratio within a round:
    a slow stretch of the machine then moves both sides of a ratio, where a ratio of two medians can
    take them from different stretches (a few percent apart at 10 ms calls on a shared 2-core VM)."""
    return {name: statistics.median(a / b for a, b in zip(t, times[reference])) for name, t in times.items()}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], table: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md``; print the table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    m = payload["machine"]
    header = f"### {name}\n\nMeasured {m['date']} on {m['cpu']} ({m['cores']} cores, torch {m['torch']}" + \
        (f", GPU {m['gpu']}" if m["gpu"] else ", CPU only") + ").\n\n"
    (RESULTS / f"{name}.md").write_text(header + table + "\n")
    print(header + table)
    return RESULTS / f"{name}.json"
