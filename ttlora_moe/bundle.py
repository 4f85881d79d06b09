"""The MoE bundle: a router plus the experts it routes to, verifiable file by file.

Layout of a bundle directory::

    manifest.json          format, base model (ref + fingerprint), routing mode (two-pass, or
                           single-pass after block k), router config, ordered experts
                           (name, registry version, path, label names), sha256 of every file,
                           gates, metrics, build timings
    router.safetensors     router weights, feature standardisation, temperature, threshold
    router.json            router config, feature spec, validation metrics
    experts/<task>/        unchanged copies of the experts' directories

The position of an expert in ``manifest["experts"]`` is its router index. Building trains only the
router (on cached base features), so adding an expert re-uses the features of the others and copies
their artifacts byte for byte. Loading checks every checksum, that every expert names the bundle's
base fingerprint and TT layout, and that the base model on this machine is the one recorded.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ttlora_moe.base_model import BaseModel, load_base_model
from ttlora_moe.data import UNLABELLED_FILE, num_rows
from ttlora_moe.errors import BadInput
from ttlora_moe.experts import META_FILE, WEIGHTS_FILE, code_version, read_expert_meta
from ttlora_moe.features import CacheStats, FeatureSpec, cached_features, num_hidden_states, sample_indices
from ttlora_moe.files import atomic_dir, read_format_json, read_json, sha256_file, write_json
from ttlora_moe.router import ROUTER_META, ROUTER_WEIGHTS, RouterConfig, load_router, save_router, train_router
from ttlora_moe.single_pass import check_route_after_layer, recorded_route_after_layer, router_feature_spec, routing_record

BUNDLE_FORMAT = "ttlora-moe/bundle@1"
MANIFEST = "manifest.json"
DEFAULT_BUNDLE: dict[str, Any] = {
    "min_router_accuracy": 0.95,   # gate: router accuracy (validation at build, test at evaluate)
    "max_retention_drop": 0.01,    # gate: bundle metric vs expert alone on correctly routed rows
    "test_per_task": 500,          # evaluate: seeded rows per task from each test split
    "out_of_scope_task": None,     # evaluate: preferred task not in the bundle (None, or in the bundle: first prepared one it lacks)
    "out_of_scope_rows": 300,      # evaluate: rows of it
    "eval_seed": 0,
    "batch_size": 32,              # inputs per MoE forward
}


def bundle_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """The ``bundle`` params with defaults; an unknown key is a one-line error."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_BUNDLE))
    if unknown:
        raise BadInput(f"unknown bundle param(s) {unknown}", f"use only {', '.join(DEFAULT_BUNDLE)}")
    return {**DEFAULT_BUNDLE, **params}


# --- building -------------------------------------------------------------------------------------

def check_experts(metas: list[tuple[Path, dict[str, Any]]]) -> None:
    """Experts may share a bundle iff they have one base, one TT layout, one pooling and distinct tasks."""
    first_dir, first = metas[0]
    seen: dict[str, Path] = {}
    for directory, meta in metas:
        where = directory / META_FILE
        if meta["task"] in seen:
            raise BadInput(f"{where}: task {meta['task']!r} is already served by {seen[meta['task']]}",
                           "give one expert per task")
        seen[meta["task"]] = directory
        if meta["base_model"]["fingerprint"] != first["base_model"]["fingerprint"]:
            raise BadInput(f"{where} was trained on base model {meta['base_model']['fingerprint'][:12]}, "
                           f"the other experts on {first['base_model']['fingerprint'][:12]} ({first_dir})",
                           "bundle only experts trained on the same base model")
        if (meta.get("layout") or {}) != (first.get("layout") or {}):
            raise BadInput(f"{where} has a different TT layout than {first_dir / META_FILE}",
                           "bundle only experts trained with the same tt config (rank, factors, target modules)")
        if meta.get("pooling") != first.get("pooling"):
            raise BadInput(f"{where} pools with {meta.get('pooling')!r}, {first_dir} with {first.get('pooling')!r}",
                           "bundle only experts trained with the same pooling")


def _task_data(task: str, params: dict[str, Any]) -> tuple[Path, str]:
    from ttlora_moe.data import prepared_md5
    from ttlora_moe.tasks import load_task_card
    from ttlora_moe.train_expert import ensure_prepared

    prepared = ensure_prepared(load_task_card(task), params)
    return prepared, prepared_md5(prepared)


def unlabelled_rows(prepared: Path) -> tuple[list[dict[str, Any]], str] | None:
    """Rows of ``<prepared>/unlabelled.parquet`` (task inputs without labels) and the file's sha256, if any.

    Inputs of a task need no label to teach the router what the task looks like. GLUE's test files
    (labels hidden) are such inputs and come from the same distribution as our test split (GLUE's
    validation files), while our train split may not: MNLI's train here is the mismatched genres,
    SST-2's train is mostly short phrases. See docs/router.md.
    """
    path = Path(prepared) / UNLABELLED_FILE
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    if "text" not in table.column_names:
        raise BadInput(f"{path} has no text column", "re-run prepare for this task")
    texts = table.column("text").to_pylist()
    pairs = table.column("text_pair").to_pylist() if "text_pair" in table.column_names else [None] * len(texts)
    return [{"text": t, "text_pair": p} for t, p in zip(texts, pairs)], sha256_file(path)


def router_data(
    base: BaseModel,
    tasks: list[str],
    spec: FeatureSpec,
    config: RouterConfig,
    params: dict[str, Any],
    progress: bool = True,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], CacheStats, dict[str, str]]:
    """Cached features and router labels (task positions) of the train and validation mixes.

    Per task: a seeded sample of ``train_per_task`` training rows (plus ``unlabelled_per_task``
    unlabelled inputs when the task has them) and ``validation_per_task`` validation rows.
    """
    stats = CacheStats()
    out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {"train": ([], []), "validation": ([], [])}
    versions: dict[str, str] = {}
    for position, task in enumerate(tasks):
        prepared, md5 = _task_data(task, params)
        versions[task] = md5
        # (mix, split, rows or None = read only if some are not cached, number of rows, cap, data version)
        sources: list[tuple[str, str, list[dict[str, Any]] | None, int, int, str]] = [
            ("train", "train", None, num_rows(prepared, "train"), config.train_per_task, md5),
            ("validation", "validation", None, num_rows(prepared, "validation"), config.validation_per_task, md5),
        ]
        extra = unlabelled_rows(prepared) if config.unlabelled_per_task else None
        if extra:
            rows, digest = extra
            sources.append(("train", "unlabelled", rows, len(rows), config.unlabelled_per_task, digest))
            versions[f"{task}/unlabelled"] = digest
        for mix, split, rows, total, cap, version in sources:
            indices = sample_indices(total, cap, config.seed)
            feats, st = cached_features(base, prepared, split, indices, spec, version, rows=rows,
                                        batch_size=config.batch_size_features, progress=progress)
            stats.add(st)
            out[mix][0].append(feats)
            out[mix][1].append(torch.full((len(indices),), position, dtype=torch.long))
    return {s: (torch.cat(x), torch.cat(y)) for s, (x, y) in out.items()}, stats, versions


def cache_task_features(task: str, *, params: dict[str, Any] | None = None, base_model: str | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Compute and cache the router features of one task now (e.g. right after its expert is trained).

    A later ``build_bundle`` with this task then trains only the router. Uses the params' base model,
    ``router`` section and ``train.max_length`` (what the expert and the bundle will use).
    """
    from ttlora_moe.base_model import DEFAULT_BASE_MODEL
    from ttlora_moe.params import load_params, section

    start = time.perf_counter()
    params = load_params() if params is None else params
    config = RouterConfig.from_dict(section(params, "router"))
    max_length = int(section(params, "train").get("max_length", 128))
    spec = router_feature_spec(config.features, max_length, config.route_after_layer)
    base_section = section(params, "base_model")
    base = load_base_model(base_model or base_section.get("ref", DEFAULT_BASE_MODEL), base_section.get("pooling"))
    _, stats, _ = router_data(base, [task], spec, config, params, progress)
    return {"task": task, "cache_hits": stats.hits, "cache_misses": stats.computed,
            "seconds": round(time.perf_counter() - start, 2)}


def build_bundle(
    expert_dirs: list[Path],
    output: Path,
    *,
    params: dict[str, Any] | None = None,
    router: dict[str, Any] | None = None,
    bundle: dict[str, Any] | None = None,
    versions: dict[str, str | None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the router for ``expert_dirs`` (in this order) and write the bundle to ``output``.

    ``router`` and ``bundle`` default to the params' ``router:`` and ``bundle:`` sections; ``versions``
    maps a task to its registry version (recorded, may be None). Returns a JSON-able summary with
    the seconds spent and the feature-cache hits.
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
    base = load_base_model(first["base_model"]["ref"], first.get("pooling"))
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
    model, report = train_router(*data["train"], *data["validation"], tasks, config, progress)
    router_seconds = time.perf_counter() - t0

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
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": BUNDLE_FORMAT,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "base_model": {"ref": first["base_model"]["ref"], "fingerprint": base.fingerprint,
                           "model_type": base.model_type, "hidden_size": base.hidden_size,
                           "pooling": first.get("pooling", base.pooling)},
            "max_length": spec.max_length,
            "routing": routing_record(config.route_after_layer),
            "router": {"kind": config.kind, "config": config.to_dict(), "features": spec.to_dict(),
                       "temperature": report.temperature, "threshold": report.threshold,
                       "false_abstain_rate": config.false_abstain_rate, "files": [ROUTER_WEIGHTS, ROUTER_META]},
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
        "router_epochs": report.epochs,
        "temperature": report.temperature,
        "abstain_threshold": report.threshold,
        "gates": gates,
        "cache_hits": stats.hits,
        "cache_misses": stats.computed,
        "seconds": {"total": round(total, 2), "load_base": round(load_seconds, 2),
                    "features": round(feature_seconds, 2), "router": round(router_seconds, 2),
                    "write": round(write_seconds, 2)},
    }


# --- loading --------------------------------------------------------------------------------------

@dataclass
class Bundle:
    """A verified bundle directory (nothing heavy loaded yet)."""

    path: Path
    manifest: dict[str, Any]
    expert_meta: list[dict[str, Any]]

    @property
    def tasks(self) -> list[str]:
        return [e["task"] for e in self.manifest["experts"]]

    def expert_dir(self, task: str) -> Path:
        for entry in self.manifest["experts"]:
            if entry["task"] == task:
                return self.path / entry["path"]
        raise BadInput(f"bundle {self.path} has no expert for {task!r}", f"pick one of {', '.join(self.tasks)}")


def load_bundle(directory: Path) -> Bundle:
    """Read and verify a bundle: format, every file's sha256, and that the experts belong together."""
    directory = Path(directory)
    path = directory / MANIFEST
    manifest = read_format_json(path, BUNDLE_FORMAT, "rebuild the bundle",
                                "point --bundle to a directory written by `ttlora-moe build-bundle`")
    files: dict[str, str] = manifest.get("files") or {}
    required = [ROUTER_WEIGHTS, ROUTER_META] + [f"{e['path']}/{n}" for e in manifest.get("experts", [])
                                                for n in (META_FILE, WEIGHTS_FILE)]
    for rel in required:
        if rel not in files:
            raise BadInput(f"{directory / rel} is not listed in {path}", "rebuild the bundle")
    for rel, digest in files.items():
        file = directory / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BadInput(f"{path} lists a file outside the bundle: {rel}", "rebuild the bundle")
        if not file.is_file():
            raise BadInput(f"{file} is missing from the bundle", "rebuild the bundle or restore the file")
        if sha256_file(file) != digest:
            raise BadInput(f"{file} does not match its sha256 in {MANIFEST} (modified or corrupt)",
                           "rebuild the bundle or restore the original file")
    fingerprint = manifest["base_model"]["fingerprint"]
    metas = []
    for entry in manifest["experts"]:
        meta = read_expert_meta(directory / entry["path"])
        where = directory / entry["path"] / META_FILE
        if meta["base_model"]["fingerprint"] != fingerprint:
            raise BadInput(f"{where} was trained on base model {meta['base_model']['fingerprint'][:12]}, "
                           f"the bundle is for {fingerprint[:12]}", "rebuild the bundle from experts of one base model")
        if meta["task"] != entry["task"]:
            raise BadInput(f"{where} is an expert for {meta['task']!r}, the manifest says {entry['task']!r}",
                           "rebuild the bundle")
        metas.append(meta)
    check_experts([(directory / e["path"], m) for e, m in zip(manifest["experts"], metas)])
    return Bundle(directory, manifest, metas)


def load_moe(bundle: Bundle | Path, base: BaseModel | None = None, device: str | torch.device | None = None):
    """The :class:`~ttlora_moe.moe.MixtureOfExperts` of a (verified) bundle, on ``device``."""
    from ttlora_moe.adapters import load_tensors
    from ttlora_moe.moe import ExpertInfo, MixtureOfExperts

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(Path(bundle))
    manifest = bundle.manifest
    recorded = manifest["base_model"]
    if base is None:
        base = load_base_model(recorded["ref"], recorded.get("pooling"))
    if base.fingerprint != recorded["fingerprint"]:
        raise BadInput(f"{bundle.path / MANIFEST} is for base model {recorded['fingerprint'][:12]}, "
                       f"{recorded['ref']!r} resolves to {base.fingerprint[:12]} here",
                       "install the base model the bundle was built for")
    if device is not None:
        base.model.to(device)
    router, router_meta = load_router(bundle.path)
    if router_meta.get("experts") != bundle.tasks:
        raise BadInput(f"{bundle.path / ROUTER_META} routes to {router_meta.get('experts')}, the manifest lists "
                       f"{bundle.tasks}", "rebuild the bundle")
    tensors = [load_tensors(bundle.path / e["path"] / WEIGHTS_FILE) for e in manifest["experts"]]
    infos = [ExpertInfo(e["name"], e.get("version"), e["task"], list(m["label_names"]), m.get("metric", "accuracy"))
             for e, m in zip(manifest["experts"], bundle.expert_meta)]
    spec = FeatureSpec.from_dict(router_meta["features"])
    k = recorded_route_after_layer(manifest)
    if (router_meta.get("config") or {}).get("route_after_layer") != k:
        raise BadInput(f"{bundle.path / MANIFEST} routes {routing_record(k)['mode']} (after layer {k}), its router was "
                       f"trained for route_after_layer={(router_meta.get('config') or {}).get('route_after_layer')}",
                       "rebuild the bundle")
    moe = MixtureOfExperts(base, infos, tensors, bundle.expert_meta, router, spec, int(manifest.get("max_length", 128)),
                           route_after_layer=k)
    return moe.to(next(base.model.parameters()).device)


def record_metrics(directory: Path, metrics: dict[str, Any], gates: dict[str, Any]) -> None:
    """Add evaluation metrics and gates to a bundle's manifest (the manifest is not in its own checksums)."""
    path = Path(directory) / MANIFEST
    manifest = read_json(path)
    manifest.setdefault("metrics", {}).update(metrics)
    manifest.setdefault("gates", {}).update(gates)
    write_json(path, manifest)
