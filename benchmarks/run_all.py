"""Run every benchmark in turn: ``python -m benchmarks.run_all [--quick]`` (what `make bench` runs)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

# sst2_sweep (how the default budget was chosen, README) runs on its own: `python -m benchmarks.sst2_sweep`.
BENCHMARKS = ["adapter_speed", "peft_quality", "tt_study", "moe_throughput", "serve_load", "single_pass", "router_scaling", "out_of_scope", "fusion_vs_moe"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run of each benchmark")
    parser.add_argument("--only", nargs="*", help="run only these benchmarks")
    args = parser.parse_args()
    failed = []
    for name in args.only or BENCHMARKS:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.{name}":
                raise
            print(f"== {name}: not available", file=sys.stderr)
            continue
        start = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            module.main(["--quick"] if args.quick else [])
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            failed.append(name)
            print(f"== {name} failed: {exc}", file=sys.stderr)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
