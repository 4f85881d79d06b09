"""Single-pass routing: the router reads the base's early states, the experts adapt only later blocks.

Two-pass routing (the default) runs the plain base once for the router's features and then the
adapted base again, so a bundle cannot beat half the base model's throughput. With
``router.route_after_layer = k`` the router sees only ``hidden_states[0..k]`` (embeddings and the
first ``k`` blocks) and every expert adapts only layers ``>= k`` (``tt.layers_from >= k``). Blocks
``0..k-1`` are then the same for routing and for every expert, so one forward serves both: a hook
before block ``k`` pools the states so far, routes, and sets each sample's expert for the blocks
that follow (:meth:`ttlora_moe.moe.MixtureOfExperts.single_pass`).

This module holds the rules of the mode: which feature spec the router gets, which experts qualify,
and what a bundle's manifest records.
"""

from __future__ import annotations

from typing import Any

from ttlora_moe.blocks import layer_index
from ttlora_moe.errors import BadInput
from ttlora_moe.moe.features import FeatureSpec

TWO_PASS = "two-pass"
SINGLE_PASS = "single-pass"


def restrict_spec(spec: FeatureSpec, k: int) -> FeatureSpec:
    """``spec`` as the router sees it when it reads hidden states ``0..k`` only.

    ``all`` becomes ``0..k`` and a negative index counts back from state ``k`` (``-1`` = state ``k``);
    a layer above ``k`` is a one-line error. The result names concrete layers, so features cached
    for it (computed on the whole base) equal those pooled inside the single pass.
    """
    def concrete(name: str, value: tuple[int, ...] | str) -> list[int]:
        if value == "all":
            return list(range(k + 1))
        bad = [v for v in value if not -(k + 1) <= v <= k]
        if bad:
            raise BadInput(f"router.features.{name} names hidden state(s) {bad}, but router.route_after_layer={k} "
                           f"lets the router see states 0..{k} only", f"use layers 0..{k} or raise route_after_layer")
        return [v % (k + 1) for v in value]

    data = spec.to_dict()
    data["layers"] = concrete("layers", spec.layers)
    data["segment_layers"] = concrete("segment_layers", spec.segment_layers)
    return FeatureSpec.from_dict(data)


def router_feature_spec(features: dict[str, Any], max_length: int, route_after_layer: int | None) -> FeatureSpec:
    """The router's feature spec from ``router.features``, restricted to states ``0..k`` in single-pass mode."""
    spec = FeatureSpec.from_dict({"max_length": max_length, **features})
    return spec if route_after_layer is None else restrict_spec(spec, route_after_layer)


def check_route_after_layer(k: int, layout: dict[str, Any], num_layers: int, where: str) -> None:
    """Single-pass routing after block ``k`` is valid iff ``0 <= k < num_layers`` and no adapted layer is below ``k``.

    ``layout`` is an expert's ``layout`` (adapted module names); ``where`` names it in the error.
    """
    if not 0 <= k < num_layers:
        raise BadInput(f"router.route_after_layer is {k}, the base model has blocks 0..{num_layers - 1}",
                       f"pick a block index in 0..{num_layers - 1}, or null for two-pass routing")
    early = sorted({i for i in (layer_index(name) for name in layout) if i is not None and i < k})
    if early:
        raise BadInput(f"{where} adapts layer(s) {early}, below router.route_after_layer={k}",
                       f"train the experts with tt.layers_from >= {k}, or route in two passes (router.route_after_layer: "
                       "null; --profile two-pass)")


def routing_record(route_after_layer: int | None) -> dict[str, Any]:
    """What a bundle's manifest records of the routing mode (``manifest["routing"]``)."""
    mode = TWO_PASS if route_after_layer is None else SINGLE_PASS
    return {"mode": mode, "route_after_layer": route_after_layer}


def recorded_route_after_layer(manifest: dict[str, Any]) -> int | None:
    """The routing layer a manifest records; ``None`` (two-pass) for bundles written before the mode existed."""
    routing = manifest.get("routing") or {}
    mode = routing.get("mode", TWO_PASS)
    if mode not in (TWO_PASS, SINGLE_PASS):
        raise BadInput(f"the manifest's routing mode {mode!r} is unknown", "rebuild the bundle with this version")
    return None if mode == TWO_PASS else int(routing["route_after_layer"])
