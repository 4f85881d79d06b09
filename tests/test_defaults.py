"""The library's defaults are params.yaml's: a call without params trains what the pipeline trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ttlora_moe.config_fields import Section
from ttlora_moe.data.prepare import DEFAULT_PREPARE
from ttlora_moe.experts.training import TrainConfig
from ttlora_moe.moe.bundle import DEFAULT_BUNDLE
from ttlora_moe.moe.features import FeatureSpec
from ttlora_moe.moe.router import RouterConfig
from ttlora_moe.moe.serve_config import ServeConfig
from ttlora_moe.params import PROFILE_SECTIONS, read_params_file
from ttlora_moe.tt.config import TTLoRAConfig

PARAMS = read_params_file(Path(__file__).resolve().parents[1] / "params.yaml")  # the project's, not TTLORA_PARAMS

# params.yaml section -> what holds its library defaults
OWNERS: dict[str, type[Section] | dict[str, Any]] = {
    "tt": TTLoRAConfig, "train": TrainConfig, "router": RouterConfig, "router.features": FeatureSpec,
    "prepare": DEFAULT_PREPARE, "bundle": DEFAULT_BUNDLE, "serve": ServeConfig,
}
NESTED = {"router": "features"}  # a sub-section checked under its own name
# Depth-dependent: params.yaml routes after block 3 of the default base's 6 (chosen by measurement);
# the library's default (two passes, every layer adapted) must work for a model of any depth.
DEPTH_DEPENDENT = {"tt": {"layers_from": (3, 0)}, "router": {"route_after_layer": (3, None)}}


PROFILES = [name for name, v in PARAMS.items() if isinstance(v, dict) and v and set(v) <= set(PROFILE_SECTIONS)]


def library_defaults(section: str) -> dict[str, Any]:
    owner = OWNERS[section]
    return dict(owner) if isinstance(owner, dict) else owner().to_dict()


def mismatches(params: dict[str, Any], section: str) -> dict[str, Any]:
    """Keys of ``params[section]`` the library does not know, and values that differ from its defaults."""
    for part in section.split("."):
        params = params[part]
    values = {k: v for k, v in params.items() if k != NESTED.get(section)}
    defaults = library_defaults(section)
    out: dict[str, Any] = {k: "unknown to the library" for k in sorted(set(values) - set(defaults))}
    out.update({k: (v, defaults[k]) for k, v in values.items() if k in defaults and v != defaults[k]})
    return {k: v for k, v in out.items() if DEPTH_DEPENDENT.get(section, {}).get(k) != v}


def test_every_params_section_with_library_defaults_is_checked():
    sections = {name for name, v in PARAMS.items() if isinstance(v, dict)} - {"base_model", *PROFILES}
    assert sections <= set(OWNERS)


@pytest.mark.parametrize("section", OWNERS)
def test_params_yaml_equals_the_library_defaults(section):
    assert mismatches(PARAMS, section) == {}, f"params.yaml {section}: (params.yaml value, library default)"


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_keys_are_known_to_the_library(profile):
    for section in PARAMS[profile]:
        if section in OWNERS:
            assert not [k for k, v in mismatches(PARAMS[profile], section).items() if v == "unknown to the library"]


def test_single_pass_routing_is_the_default_and_its_experts_match_it():
    assert PARAMS["router"]["route_after_layer"] == PARAMS["tt"]["layers_from"] == 3
    for name in PROFILES:  # a profile that routes in two passes adapts every layer
        if (PARAMS[name].get("router") or {}).get("route_after_layer", 3) is None:
            assert PARAMS[name]["tt"]["layers_from"] == 0


def test_the_check_reports_a_drifted_value_and_an_unknown_key():
    drifted = {"tt": {**PARAMS["tt"], "rank": 5}, "router": {"features": {**PARAMS["router"]["features"], "pool": 1}}}
    assert mismatches(drifted, "tt") == {"rank": (5, 4)}
    assert mismatches(drifted, "router.features") == {"pool": "unknown to the library"}
