"""Build a bundle: train the router for a list of experts (on cached features) and write the bundle directory."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ttlora_moe.devices import params_device
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import META_FILE, WEIGHTS_FILE, read_expert_meta
from ttlora_moe.experts.base_model import load_base_model
from ttlora_moe.files import atomic_dir, sha256_file, write_json
from ttlora_moe.moe.bundle import BUNDLE_FORMAT, MANIFEST, bundle_params, check_experts
from ttlora_moe.moe.expert_features import adapted_base, expert_router_data
from ttlora_moe.moe.features import num_hidden_states
from ttlora_moe.moe.router import (
    ROUTER_META,
    ROUTER_WEIGHTS,
    RouterConfig,
    save_router,
    train_router,
)
from ttlora_moe.moe.router_data import router_data
from ttlora_moe.moe.second_look import (
    every_state_spec,
    fit_second_look,
    save_second_look,
    second_look_config,
    second_look_source,
)
from ttlora_moe.moe.serve_config import ServeConfig
from ttlora_moe.moe.single_pass import (
    check_route_after_layer,
    router_feature_spec,
    routing_record,
)
from ttlora_moe.provenance import code_version


def build_bundle(
    expert_dirs: list[Path],
    output: Path,
    *,
    params: dict[str, Any] | None = None,
    router: dict[str, Any] | None = None,
    bundle: dict[str, Any] | None = None,
    versions: dict[str, str | None] | None = None,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Train the router for ``expert_dirs`` (in this order) and write the bundle to ``output``.

    ``router`` and ``bundle`` default to the params' ``router:`` and ``bundle:`` sections; ``versions``
    maps a task to its registry version (recorded, may be None). Returns a JSON-able summary with
    the seconds spent and the feature-cache hits. Base-model features are computed on ``device``
    (default params.yaml ``device``); the router is tiny and trains on the CPU.
    """
    from ttlora_moe.params import load_params, section

    start = time.perf_counter()
    params = load_params() if params is None else params
    config = RouterConfig.from_dict(section(params, "router") if router is None else router)
    bparams = bundle_params(section(params, "bundle") if bundle is None else bundle)
    if not expert_dirs:
        raise BadInput("no experts given", "pass one or more expert directories with --experts")
    metas = [(Path(d), read_expert_meta(Path(d))) for d in expert_dirs]
    check_experts(metas)
    first = metas[0][1]
    tasks = [m["task"] for _, m in metas]
    spec = router_feature_spec(config.features, int(first.get("max_length", 128)), config.route_after_layer)

    t0 = time.perf_counter()
    device = params_device(params, device)
    base = load_base_model(first["base_model"]["ref"], first.get("pooling"), device=device)
    if base.fingerprint != first["base_model"]["fingerprint"]:
        raise BadInput(f"{metas[0][0] / META_FILE} names base model {first['base_model']['ref']!r} with fingerprint "
                       f"{first['base_model']['fingerprint'][:12]}, but it resolves to {base.fingerprint[:12]} here",
                       "install the base model the experts were trained on")
    if config.route_after_layer is not None:
        check_route_after_layer(config.route_after_layer, first.get("layout") or {}, num_hidden_states(base) - 1,
                                str(metas[0][0] / META_FILE))
    load_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    data, stats, md5s = router_data(base, tasks, spec, config, params, progress)
    feature_seconds = time.perf_counter() - t0
    for directory, meta in metas:
        recorded = (meta.get("data") or {}).get("prepared_md5")
        if recorded and recorded != md5s[meta["task"]]:
            print(f"warning: {directory} was trained on prepared data {recorded[:8]}, the router uses "
                  f"{md5s[meta['task']][:8]}", file=sys.stderr)

    t0 = time.perf_counter()
    model, report = train_router(*data["train"], *data["validation"], tasks, config, progress, block=base.hidden_size)
    router_seconds = time.perf_counter() - t0

    look, look_report = None, None
    if second_look_config(config) is not None:  # single pass: the second router reads every state of the same rows
        t0 = time.perf_counter()
        every_state = every_state_spec(config, spec.max_length)
        if second_look_source(config) == "adapted":  # as a single pass ends: each task's rows through its own expert
            bases = (adapted_base(d, first["base_model"]["ref"], first.get("pooling"), device) for d, _ in metas)
            full, full_stats = expert_router_data(bases, tasks, every_state, config, params, progress)
        else:
            full, full_stats, _ = router_data(base, tasks, every_state, config, params, progress)
        stats.add(full_stats)
        look, look_report = fit_second_look(model, data["validation"][0], full["train"], full["validation"], tasks,
                                            config, every_state, base.hidden_size, progress)
        look_report["seconds"] = round(time.perf_counter() - t0, 2)
    look_record = None if look is None else {**look.record(), **look_report}  # in the manifest and the summary

    versions = versions or {}
    experts = []
    for directory, meta in metas:
        experts.append({
            "name": meta["task"], "task": meta["task"], "version": versions.get(meta["task"]),
            "path": f"experts/{meta['task']}", "source": str(directory.resolve()),
            "label_names": meta["label_names"], "num_labels": len(meta["label_names"]),
            "metric": meta.get("metric", "accuracy"), "kind": meta.get("kind", "ttlora"),
            "data_md5": (meta.get("data") or {}).get("prepared_md5"),
            "test_metrics": (meta.get("metrics") or {}).get("test"),
        })
    gate = bparams["min_router_accuracy"]
    gates = {"router_validation_accuracy": {"value": report.validation_balanced_accuracy, "min": gate,
                                            "passed": report.validation_balanced_accuracy >= gate}}
    t0 = time.perf_counter()
    output = Path(output)
    with atomic_dir(output) as tmp:
        for (directory, meta), entry in zip(metas, experts):
            target = tmp / entry["path"]
            target.mkdir(parents=True)
            for name in (META_FILE, WEIGHTS_FILE):
                shutil.copy2(directory / name, target / name)
        save_router(tmp, model, {
            "experts": tasks, "features": spec.to_dict(), "config": config.to_dict(),
            "base_fingerprint": base.fingerprint, "validation": report.to_dict(), "data_md5": md5s,
        })
        if look is not None:
            save_second_look(tmp, look, {"experts": tasks, "config": config.to_dict(), "base_fingerprint": base.fingerprint,
                                         "data_md5": md5s, "validation": look_report})
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": BUNDLE_FORMAT,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "base_model": {"ref": first["base_model"]["ref"], "fingerprint": base.fingerprint,
                           "model_type": base.model_type, "hidden_size": base.hidden_size,
                           "pooling": first.get("pooling", base.pooling)},
            "max_length": spec.max_length,
            "routing": routing_record(config.route_after_layer),
            "serve": ServeConfig.from_dict(section(params, "serve")).to_dict(),
            "router": {"kind": config.kind, "config": config.to_dict(), "features": spec.to_dict(),
                       "temperature": report.temperature, "threshold": report.threshold,
                       "false_abstain_rate": config.false_abstain_rate, "files": [ROUTER_WEIGHTS, ROUTER_META],
                       "second_look": look_record},
            "experts": experts,
            "files": files,
            "gates": gates,
            "metrics": {"router_validation": {k: v for k, v in report.to_dict().items() if k != "history"}},
            "data_md5": md5s,
            "build": {"seconds_load_base": round(load_seconds, 2), "seconds_features": round(feature_seconds, 2),
                      "seconds_router": round(router_seconds, 2), "feature_rows_cached": stats.hits,
                      "feature_rows_computed": stats.computed},
        }
        write_json(tmp / MANIFEST, manifest)
    write_seconds = time.perf_counter() - t0
    total = time.perf_counter() - start
    return {
        "bundle": str(output.resolve()),
        "experts": tasks,
        "router_kind": config.kind,
        "routing": routing_record(config.route_after_layer),
        "router_validation_accuracy": report.validation_accuracy,
        "router_validation_balanced_accuracy": report.validation_balanced_accuracy,
        "router_validation_per_task": report.validation_per_task,
        "router_passes": report.epochs,  # AdamW epochs or L-BFGS loss evaluations
        "temperature": report.temperature,
        "abstain_threshold": report.threshold,
        "second_look": look_record,
        "gates": gates,
        "cache_hits": stats.hits,
        "cache_misses": stats.computed,
        "seconds": {"total": round(total, 2), "load_base": round(load_seconds, 2),
                    "features": round(feature_seconds, 2), "router": round(router_seconds, 2),
                    "write": round(write_seconds, 2)},
    }
