"""A second look for single-pass routing's abstention: the doubtful inputs are scored again on every state.

Single-pass routing decides at block ``k`` from states ``0..k`` (:mod:`ttlora_moe.moe.single_pass`),
so its out-of-scope detector never sees the later blocks that two-pass routing reads, and it lets more
junk through (README "Abstention": 96.9% of the junk abstains with states 0-3, 100% with every state).
With ``router.second_look.rate = r > 0`` (off by default: README "Abstention" has what it buys and
costs), an input whose early score lies in the top ``r`` of the in-scope validation scores (the
*band*) gets one more forward, of the plain base, and a second router and detector trained on every
state (the two-pass features, ``router.second_look.out_of_scope`` over ``router.out_of_scope``)
decide whether it abstains. Below the band nothing changes and nothing abstains.
The second threshold is set so that ``router.false_abstain_rate`` of the in-scope validation inputs
abstain in all. Cost: about ``r`` of the in-scope traffic pays one more forward of the plain base
(inputs far out of scope take it too); routing itself is still the early router's.

``router.second_look.source: adapted`` reads the later states from the single pass itself instead: by
then every input has gone through all blocks, those after ``k`` adapted by the expert it was routed
to, so every state is there for free (no second forward; only the pooling and the second detector's
scoring). The second router is then trained on each task's rows *through that task's own expert*
(:mod:`ttlora_moe.moe.expert_features`), which is what an in-scope input routed to its own expert
holds at the end of its forward; a bundle build needs the experts for that, and ``rate: 1`` scores
every input this way. ``combine: sum`` serves a looked input the early score plus the second one. Measured
worse than the early states alone (README "Abstention": an expert pulls an unseen sibling toward its task).

The served score is one number, monotone in the decision: the early score below the band, the band
plus the second score inside it (both are sums of surprisals, never negative), so a threshold on it,
the AUROC gate and the README's benchmark read the cascade as they read a single detector.
Two-pass routers already read every state: there the second look is not built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ttlora_moe.errors import BadInput
from ttlora_moe.moe.features import FeatureSpec
from ttlora_moe.moe.out_of_scope import check_options, weighted_quantile_threshold
from ttlora_moe.moe.router import (
    ROUTER_META,
    Router,
    RouterConfig,
    load_router,
    save_router,
    task_weights,
    train_router,
)
from ttlora_moe.moe.single_pass import router_feature_spec

DIRECTORY = "second_look"  # in a bundle: the second router's router.safetensors and router.json
SOURCES = ("plain", "adapted")  # where the second look's states come from: another plain forward, or the single pass
COMBINES = ("band", "sum")  # a looked input's served score: the band plus the second score, or the early plus the second
DEFAULTS: dict[str, Any] = {"rate": 0.0, "source": "plain", "combine": "band", "out_of_scope": {}}


def check_second_look(options: dict[str, Any]) -> None:
    """BadInput unless ``options`` (params.yaml ``router.second_look``) is ``rate`` in [0, 1] and detector options."""
    unknown = sorted(set(options) - set(DEFAULTS))
    rate = options.get("rate", DEFAULTS["rate"])
    oos = options.get("out_of_scope", {})
    if unknown or isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1 \
            or not isinstance(oos, dict) or options.get("source", DEFAULTS["source"]) not in SOURCES \
            or options.get("combine", DEFAULTS["combine"]) not in COMBINES:
        raise BadInput(f"router.second_look is {options}",
                       "use rate (0 to 1: the share of in-scope inputs that get a second look; 0 turns it off), "
                       f"source ({' or '.join(SOURCES)}), combine ({' or '.join(COMBINES)}) and out_of_scope "
                       "(router.out_of_scope options for the second detector) only")
    check_options(oos)


def second_look_config(config: RouterConfig) -> RouterConfig | None:
    """The second router's config (two passes, the second detector's options), or None when there is no second
    look: two-pass routing, or ``rate`` 0."""
    if config.route_after_layer is None or not second_look_option(config, "rate"):
        return None
    second = copy.deepcopy(config)
    second.route_after_layer = None
    second.out_of_scope = {**config.out_of_scope, **second_look_option(config, "out_of_scope")}
    second.generative_weights = (0.0,)
    return second


def every_state_spec(config: RouterConfig, max_length: int) -> FeatureSpec:
    """The second router's feature spec: ``router.features`` on every state, as a two-pass router reads them."""
    return router_feature_spec(config.features, max_length, None)


def second_look_option(config: RouterConfig, name: str) -> Any:
    """``router.second_look``'s option ``name``, its default (:data:`DEFAULTS`) when unset."""
    return {**DEFAULTS, **config.second_look}[name]


def second_look_source(config: RouterConfig) -> str:
    """``plain`` or ``adapted``: where the second look's states come from (:data:`SOURCES`)."""
    return str(second_look_option(config, "source"))


def second_look_combine(config: RouterConfig) -> str:
    """``band`` or ``sum``: how a looked input's served score is made (:data:`COMBINES`)."""
    return str(second_look_option(config, "combine"))


@dataclass
class SecondLook:
    """The second router (on ``spec``: every state), the early score above which an input gets it (``band``), the
    threshold of the served score (``band`` or the early score, by ``combine``, plus the second score) and where its
    states come from (``source``)."""

    router: Router
    spec: FeatureSpec
    band: float
    threshold: float
    rate: float
    source: str = "plain"
    combine: str = "band"

    def score(self, early: torch.Tensor, looked: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The served score: ``early`` where there was no second look, ``band + second`` (combine ``band``) or
        ``early + second`` (``sum``: both detectors' surprisals) at the rows ``looked`` (a boolean mask; ``second``
        has one score per looked row). Either way a looked input scores above every input below the band."""
        out = early.clone()
        out[looked] = (self.band if self.combine == "band" else early[looked]) + second.to(out.dtype)
        return out

    def record(self) -> dict[str, Any]:
        """What a bundle's manifest records."""
        return {"rate": self.rate, "source": self.source, "combine": self.combine, "band": self.band,
                "threshold": self.threshold, "features": self.spec.to_dict(), "directory": DIRECTORY}


def fit_second_look(early_router: Router, early_val_x: torch.Tensor, train: tuple[torch.Tensor, torch.Tensor],
                    validation: tuple[torch.Tensor, torch.Tensor], expert_names: list[str], config: RouterConfig,
                    spec: FeatureSpec, block: int | None, progress: bool = False) -> tuple[SecondLook, dict[str, Any]]:
    """Train the second router on every state's features (``train``, ``validation``: the same rows as the early
    router's) and set the band and the threshold on the validation rows (:func:`calibrate_second_look`).

    Returns the second look and a report (the second router's validation accuracy, the share of validation
    inputs in the band, the validation false-abstain rate of the cascade).
    """
    second_config = second_look_config(config)
    if second_config is None:
        raise BadInput("router.second_look is off (rate 0) or the router routes in two passes",
                       "set router.second_look.rate > 0 with router.route_after_layer")
    router, report = train_router(*train, *validation, expert_names, second_config, progress, block=block)
    with torch.no_grad():
        early, second = early_router.route(early_val_x)[3], router.route(validation[0])[3]
    look, calibration = calibrate_second_look(router, spec, early, second, task_weights(validation[1], len(expert_names)),
                                              float(second_look_option(config, "rate")), config.false_abstain_rate,
                                              second_look_source(config), second_look_combine(config))
    return look, {"second_router_validation_balanced_accuracy": report.validation_balanced_accuracy, **calibration,
                  "seconds_router": report.seconds}


def calibrate_second_look(router: Router, spec: FeatureSpec, early: torch.Tensor, second: torch.Tensor,
                          weights: torch.Tensor, rate: float, false_abstain_rate: float,
                          source: str = "plain", combine: str = "band") -> tuple[SecondLook, dict[str, float]]:
    """The band (the early score above which ``rate`` of the weighted validation inputs lie) and the threshold of the
    served score (above which ``false_abstain_rate`` of them lie; only looked inputs can), from the early and the
    second router's scores of the same validation inputs. The threshold is never below the band, so an input below
    it never abstains, even when ``rate`` is smaller than ``false_abstain_rate``."""
    band = weighted_quantile_threshold(early, rate, weights) if rate < 1 else -1.0
    looked = early > band
    look = SecondLook(router, spec, float(band), 0.0, rate, source, combine)
    served = look.score(early, looked, second[looked])
    look.threshold = max(look.band, weighted_quantile_threshold(
        torch.where(looked, served, torch.full_like(served, -1.0)), false_abstain_rate, weights))

    def share(mask: torch.Tensor) -> float:
        return float((mask.float() * weights).sum() / weights.sum())

    return look, {"validation_share_looked": share(looked), "validation_false_abstain": share(served > look.threshold)}


def save_second_look(bundle_dir: Path, look: SecondLook, meta: dict[str, Any]) -> None:
    """Write the second router into ``bundle_dir/second_look`` (its band and threshold in its router.json)."""
    directory = Path(bundle_dir) / DIRECTORY
    directory.mkdir()
    save_router(directory, look.router, {**meta, "features": look.spec.to_dict(), "second_look": look.record()})


def load_second_look(bundle_dir: Path) -> SecondLook | None:
    """The bundle's second look, or None when it has none (two-pass bundles, rate 0, bundles built before it)."""
    directory = Path(bundle_dir) / DIRECTORY
    if not (directory / ROUTER_META).is_file():
        return None
    router, meta = load_router(directory)
    record = meta.get("second_look") or {}
    try:
        return SecondLook(router, FeatureSpec.saved(meta["features"]), float(record["band"]), float(record["threshold"]),
                          float(record["rate"]), str(record.get("source", "plain")),  # older bundles: plain, band
                          str(record.get("combine", "band")))
    except (KeyError, TypeError, ValueError):
        raise BadInput(f"{directory / ROUTER_META} has no complete second_look record", "rebuild the bundle") from None
