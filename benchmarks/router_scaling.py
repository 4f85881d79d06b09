"""Router scaling: accuracy on the mixed test splits and training time for 2, 4, 6, 10 and all tasks.

Tasks come in a fixed order: params.yaml ``tasks`` (the six default ones) first, then every other
task card (``data/tasks/*.yaml``) alphabetically, each prepared from the mirror when it is not yet
(a card whose data cannot be prepared is left out, with the reason printed); a subset of N tasks is
the first N (``--tasks`` gives another order). For each subset the library's router (params.yaml ``router``) is trained as
``build_bundle`` trains it (``bundle.router_data`` on cached base features, ``router.train_router``)
and scored on a seeded sample of every task's **test** split (``bundle.test_per_task`` rows, the
``bundle.eval_seed`` sample): accuracy (routed to the input's task, abstentions count as wrong),
balanced accuracy (mean over tasks), the worst task and the abstain rate.

Times: ``features_s`` reads the subset's cached features, ``train_s`` trains the router. Before the
subsets run, the features of every task are brought into the cache (``cache_fill``: its time and
the rows it had to compute, 0 when the cache was warm). **A task joins**: the last task of the
largest subset is added to the others; its features are computed for the first time (into an
empty temporary cache, so the number is a real first computation even when the cache is warm:
``first_features_s``) and the router is retrained on all of them with every feature cached
(``retrain_s`` = read cached features + train: the largest subset's run).

The features are the router's as ``build_bundle`` computes them (``router.route_after_layer``: states
``0..k`` in single-pass mode); ``--profile pool`` measures the pool bundle's settings (two passes).

    python -m benchmarks.router_scaling [--quick] [--tasks ...] [--base-model REF] [--profile pool]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch

from benchmarks.common import markdown_table, run_benchmark, write_results
from ttlora_moe.data.cards import list_tasks, load_task_card
from ttlora_moe.data.prepare import ensure_prepared
from ttlora_moe.data.prepared import load_split, prepared_md5
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL, BaseModel, load_base_model
from ttlora_moe.moe.bundle import bundle_params
from ttlora_moe.moe.feature_cache import CacheStats, cached_features, sample_indices
from ttlora_moe.moe.features import FeatureSpec
from ttlora_moe.moe.router import SOLVERS, Router, RouterConfig, balanced_accuracy, train_router
from ttlora_moe.moe.router_data import router_data
from ttlora_moe.moe.single_pass import router_feature_spec
from ttlora_moe.params import load_params, section

SIZES = (2, 4, 6, 10)
QUICK_SIZES = (2, 4)
QUICK_ROUTER = {"train_per_task": 300, "validation_per_task": 100, "unlabelled_per_task": 100}
QUICK_TEST_PER_TASK = 100
COLUMNS = ["tasks", "router_accuracy", "balanced_accuracy", "worst_task", "worst_task_accuracy", "abstain_rate",
           "generative_weight", "l2", "train_rows", "passes", "features_s", "train_s"]


def available(task: str, params: dict[str, Any]) -> bool:
    """Whether ``task``'s data is prepared (preparing it now if needed); why not, on stderr."""
    try:
        ensure_prepared(load_task_card(task), params)
    except BadInput as exc:
        print(f"warning: {task} left out: {exc}", file=sys.stderr)
        return False
    return True


def task_order(params: dict[str, Any], requested: list[str] | None) -> list[str]:
    """``requested``, else params ``tasks``, then the other task cards alphabetically: those whose data is available."""
    if requested:
        return list(requested)
    cards = list_tasks()
    first = [t for t in params.get("tasks", []) if t in cards]
    return [t for t in first + [t for t in cards if t not in first] if available(t, params)]


def subset_sizes(total: int, quick: bool) -> list[int]:
    """The sizes to run: 2, 4, 6, 10 and all (quick: 2 and 4), capped at ``total``."""
    wanted = QUICK_SIZES if quick else (*SIZES, total)
    return sorted({min(n, total) for n in wanted})


@contextlib.contextmanager
def empty_cache() -> Iterator[None]:
    """Within the block, features are cached in an empty temporary folder (``TTLORA_CACHE``)."""
    before = os.environ.get("TTLORA_CACHE")
    with tempfile.TemporaryDirectory(prefix="router-scaling-cache-") as tmp:
        os.environ["TTLORA_CACHE"] = tmp
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("TTLORA_CACHE", None)
            else:
                os.environ["TTLORA_CACHE"] = before


def heldout_features(base: BaseModel, tasks: list[str], spec: FeatureSpec, per_task: int, seed: int,
                  params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, CacheStats]:
    """Cached features and task positions of a seeded sample of ``per_task`` test rows of every task."""
    xs, ys, stats = [], [], CacheStats()
    for position, task in enumerate(tasks):
        prepared = ensure_prepared(load_task_card(task), params)
        rows = load_split(prepared, "test")
        indices = sample_indices(len(rows), per_task, seed)
        feats, st = cached_features(base, prepared, "test", indices, spec, prepared_md5(prepared), rows=rows,
                                    batch_size=64, progress=False)
        stats.add(st)
        xs.append(feats)
        ys.append(torch.full((len(indices),), position, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys), stats


def score(router: Router, x: torch.Tensor, y: torch.Tensor, tasks: list[str]) -> dict[str, Any]:
    """Routing accuracy of the arg-max expert, balanced accuracy, worst task, and (apart) the abstain rate on ``x``."""
    routed, _, probs, _ = router.route(x)
    index = probs.argmax(-1)
    per_task = {t: float((index[y == e] == e).float().mean()) for e, t in enumerate(tasks)}
    worst = min(per_task, key=per_task.__getitem__)
    return {"router_accuracy": float((index == y).float().mean()),
            "balanced_accuracy": balanced_accuracy(index, y, len(tasks)), "worst_task": worst,
            "worst_task_accuracy": per_task[worst], "abstain_rate": float((routed < 0).float().mean()),
            "per_task": per_task}


def fit(base: BaseModel, tasks: list[str], spec: FeatureSpec, config: RouterConfig,
        params: dict[str, Any]) -> tuple[Router, dict[str, Any]]:
    """Read the cached features of ``tasks`` and train their router; the seconds of each step."""
    t0 = time.perf_counter()
    data, stats, _ = router_data(base, tasks, spec, config, params, progress=False)
    t1 = time.perf_counter()
    router, report = train_router(*data["train"], *data["validation"], tasks, config, progress=False,
                                  block=base.hidden_size)
    t2 = time.perf_counter()
    return router, {"features_s": t1 - t0, "train_s": t2 - t1, "feature_rows_computed": stats.computed,
                    "train_rows": report.train_rows, "passes": report.epochs, "l2": report.l2,
                    "validation_balanced_accuracy": report.validation_balanced_accuracy,
                    "generative_weight": report.generative_weight}


def fill_cache(base: BaseModel, order: list[str], spec: FeatureSpec, config: RouterConfig, params: dict[str, Any],
               test_per_task: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Bring every router and test feature of ``order`` into the cache; the test features, labels and what it took."""
    t0 = time.perf_counter()
    _, fill, _ = router_data(base, order, spec, config, params, progress=False)
    test_x, test_y, test_fill = heldout_features(base, order, spec, test_per_task, seed, params)
    return test_x, test_y, {"seconds": time.perf_counter() - t0, "rows_computed": fill.computed + test_fill.computed,
                            "rows_cached": fill.hits + test_fill.hits}


def first_features(base: BaseModel, task: str, spec: FeatureSpec, config: RouterConfig,
                   params: dict[str, Any]) -> tuple[float, int]:
    """Seconds and rows of computing ``task``'s router features from nothing (into an empty cache)."""
    t0 = time.perf_counter()
    with empty_cache():
        _, stats, _ = router_data(base, [task], spec, config, params, progress=False)
    return time.perf_counter() - t0, stats.computed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"subsets {QUICK_SIZES}, router rows {QUICK_ROUTER}, {QUICK_TEST_PER_TASK} test rows per task")
    parser.add_argument("--tasks", nargs="*", default=None, help="the task order (default: params tasks, then the rest)")
    parser.add_argument("--base-model", default=None, help="base model reference (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="a params.yaml profile merged over the defaults, e.g. pool")
    parser.add_argument("--solver", choices=SOLVERS, default=None, help="router.solver (default: params.yaml)")
    parser.add_argument("--results", default="router_scaling", help="results name under benchmarks/results/")
    args = parser.parse_args(argv)
    params = load_params(profile=args.profile)
    config = RouterConfig.from_dict({**section(params, "router"), **(QUICK_ROUTER if args.quick else {}),
                                     **({"solver": args.solver} if args.solver else {})})
    bparams = bundle_params(section(params, "bundle"))
    test_per_task = QUICK_TEST_PER_TASK if args.quick else int(bparams["test_per_task"])
    spec = router_feature_spec(config.features, int(section(params, "train").get("max_length", 128)),
                               config.route_after_layer)
    base_section = section(params, "base_model")
    base = load_base_model(args.base_model or base_section.get("ref", DEFAULT_BASE_MODEL), base_section.get("pooling"))
    order = task_order(params, args.tasks)
    if len(order) < 2:
        raise BadInput(f"router scaling needs at least 2 tasks with data, found {len(order)}",
                       "set TTLORA_DATA_MIRROR to the dataset mirror (e.g. ../shared/datasets) or name --tasks")
    sizes = subset_sizes(len(order), args.quick)
    order = order[: sizes[-1]]

    test_x, test_y, cache_fill = fill_cache(base, order, spec, config, params, test_per_task, int(bparams["eval_seed"]))
    rows = []
    for n in sizes:
        router, timing = fit(base, order[:n], spec, config, params)
        keep = test_y < n
        rows.append({"tasks": n, "task_names": order[:n], **score(router, test_x[keep], test_y[keep], order[:n]),
                     **timing})
    joining = order[-1]
    first_s, first_rows = first_features(base, joining, spec, config, params)
    retrain = rows[-1]  # the largest subset is every task: its run is the retraining after the join
    join = {"joining_task": joining, "tasks_after": len(order), "first_features_s": first_s,
            "first_feature_rows": first_rows, "retrain_s": retrain["features_s"] + retrain["train_s"],
            "retrain_features_s": retrain["features_s"], "retrain_train_s": retrain["train_s"]}

    table = (f"Task order: {', '.join(order)}. Router: {config.kind} ({config.solver}), {config.train_per_task} train "
             f"(+ {config.unlabelled_per_task} unlabelled) and {config.validation_per_task} validation rows per task; "
             f"test: {test_per_task} seeded test rows per task. Feature cache fill before the runs: "
             f"{cache_fill['seconds']:.1f} s, {cache_fill['rows_computed']} rows computed, "
             f"{cache_fill['rows_cached']} cached.\n\n" + markdown_table(rows, COLUMNS)
             + f"\n\n**{joining} joins {len(order) - 1} tasks**: first computation of its features "
             f"{first_s:.1f} s ({first_rows} rows); retraining the router with every feature cached "
             f"{join['retrain_s']:.1f} s ({retrain['features_s']:.1f} s reading features + {retrain['train_s']:.1f} s "
             "training).")
    payload = {"rows": rows, "order": order, "join": join, "cache_fill": cache_fill, "router": config.to_dict(),
               "test_per_task": test_per_task, "quick": args.quick}
    write_results(args.results, payload, table)
    return payload


if __name__ == "__main__":
    run_benchmark(main)
