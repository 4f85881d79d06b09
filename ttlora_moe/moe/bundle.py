"""The MoE bundle: a router plus the experts it routes to, verifiable file by file.

Layout of a bundle directory::

    manifest.json          format, base model (ref + fingerprint), routing mode (two-pass, or
                           single-pass after block k), router config, ordered experts
                           (name, registry version, path, label names), sha256 of every file,
                           gates, metrics, build timings
    router.safetensors     router weights, feature standardisation, temperature, threshold
    router.json            router config, feature spec, validation metrics
    second_look/           single-pass bundles: the second router (every state) for doubtful inputs,
                           with its band and threshold (ttlora_moe.moe.second_look)
    experts/<task>/        unchanged copies of the experts' directories

The position of an expert in ``manifest["experts"]`` is its router index. Building trains only the
router (on cached base features, :mod:`ttlora_moe.moe.build`), so adding an expert re-uses the features of the others and copies
their artifacts byte for byte. Loading checks every checksum, that every expert names the bundle's
base fingerprint and TT layout, and that the base model on this machine is the one recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ttlora_moe.devices import resolve_device
from ttlora_moe.errors import BadInput
from ttlora_moe.experts.artifact import META_FILE, WEIGHTS_FILE, read_expert_meta
from ttlora_moe.experts.base_model import BaseModel, load_base_model
from ttlora_moe.files import read_format_json, read_json, sha256_file, write_json
from ttlora_moe.moe.features import FeatureSpec
from ttlora_moe.moe.router import ROUTER_META, ROUTER_WEIGHTS, load_router
from ttlora_moe.moe.second_look import DIRECTORY, load_second_look
from ttlora_moe.moe.serve_config import ServeConfig
from ttlora_moe.moe.single_pass import recorded_route_after_layer, routing_record

BUNDLE_FORMAT = "ttlora-moe/bundle@1"
MANIFEST = "manifest.json"
DEFAULT_BUNDLE: dict[str, Any] = {
    "min_router_accuracy": 0.95,   # gate: router accuracy (validation at build, test at evaluate)
    "min_out_of_scope_auroc": 0.7,  # gate: how well abstention separates the out-of-scope task's rows from in-scope ones
    "floors": {},                  # gate: per task, the least metric the bundle may reach; a task without one must beat
    "floor_margin": 0.0,           # ... its head-only baseline on the same rows, less this margin
    "max_task_drop": 0.01,         # gate: a task (and the mixed metric) may fall at most this far below the champion
    "test_per_task": 500,          # evaluate: seeded rows per task from each test split
    "out_of_scope_task": "boolq",   # evaluate: preferred task not in the bundle (None, in the bundle or without a card: first prepared one it lacks)
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


def serve_config(bundle: Bundle) -> ServeConfig:
    """How the bundle serves: its manifest's ``serve`` record (defaults for bundles written before 0.2)."""
    return ServeConfig.from_dict(bundle.manifest.get("serve"))


def load_moe(bundle: Bundle | Path, base: BaseModel | None = None, device: str | torch.device | None = None,
             serve: ServeConfig | None = None):
    """The :class:`~ttlora_moe.moe.mixture.MixtureOfExperts` of a (verified) bundle, on ``device``.

    ``serve`` (default: the bundle's own) chooses how its adapted layers compute.
    """
    from ttlora_moe.files import load_tensors
    from ttlora_moe.moe.mixture import ExpertInfo, MixtureOfExperts

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
        base.model.to(resolve_device(device))
    router, router_meta = load_router(bundle.path)
    if router_meta.get("experts") != bundle.tasks:
        raise BadInput(f"{bundle.path / ROUTER_META} routes to {router_meta.get('experts')}, the manifest lists "
                       f"{bundle.tasks}", "rebuild the bundle")
    tensors = [load_tensors(bundle.path / e["path"] / WEIGHTS_FILE) for e in manifest["experts"]]
    infos = [ExpertInfo(e["name"], e.get("version"), e["task"], list(m["label_names"]), m.get("metric", "accuracy"))
             for e, m in zip(manifest["experts"], bundle.expert_meta)]
    spec = FeatureSpec.saved(router_meta["features"])
    k = recorded_route_after_layer(manifest)
    if (router_meta.get("config") or {}).get("route_after_layer") != k:
        raise BadInput(f"{bundle.path / MANIFEST} routes {routing_record(k)['mode']} (after layer {k}), its router was "
                       f"trained for route_after_layer={(router_meta.get('config') or {}).get('route_after_layer')}",
                       "rebuild the bundle")
    look = load_second_look(bundle.path)
    if look is not None and look.router.num_experts != len(bundle.tasks):
        raise BadInput(f"{bundle.path / DIRECTORY} routes to {look.router.num_experts} experts, the manifest lists "
                       f"{len(bundle.tasks)}", "rebuild the bundle")
    serve = serve or serve_config(bundle)
    moe = MixtureOfExperts(base, infos, tensors, bundle.expert_meta, router, spec, int(manifest.get("max_length", 128)),
                           route_after_layer=k, adapter_path=serve.adapter_path, merged_cache_mb=serve.merged_cache_mb,
                           second_look=look)
    return moe.to(next(base.model.parameters()).device)


def record_metrics(directory: Path, metrics: dict[str, Any], gates: dict[str, Any]) -> None:
    """Add evaluation metrics and gates to a bundle's manifest (the manifest is not in its own checksums)."""
    path = Path(directory) / MANIFEST
    manifest = read_json(path)
    manifest.setdefault("metrics", {}).update(metrics)
    manifest.setdefault("gates", {}).update(gates)
    write_json(path, manifest)
