"""Loading a bundle: routing and abstaining, and refusal of tampered or missing files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.toys import (
    MOE_TASKS,
    moe_rows,
)
from ttlora_moe.errors import BadInput

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bundle_predicts_routes_and_abstains(moe_bundle):
    from ttlora_moe.moe.bundle import load_moe

    moe = load_moe(moe_bundle[0])
    # routing first: this toy router's detector abstains on ~5% of in-scope inputs by design (tests/moe/test_out_of_scope.py)
    moe.router.detector.threshold.fill_(float("inf"))
    rows = moe_rows("senti", 2) + moe_rows("nli", 2) + moe_rows("quest", 2)
    answers = moe.predict(rows)
    assert [a["task"] for a in answers] == ["senti"] * 2 + ["nli"] * 2 + ["quest"] * 2
    for a in answers:
        assert set(a["probabilities"]) == set(MOE_TASKS[a["task"]][0])
        assert abs(sum(a["probabilities"].values()) - 1) < 1e-5 and a["label"] in a["probabilities"]
        assert 0 < a["router_confidence"] <= 1 and not a["abstained"]
    # each row's answer is its own: alone in its batch it gets the same expert, label and probabilities
    for a, alone in zip(answers, moe.predict(rows, batch_size=1)):
        assert (alone["task"], alone["label"]) == (a["task"], a["label"])
        assert alone["probabilities"] == pytest.approx(a["probabilities"], abs=1e-5)
        assert alone["router_confidence"] == pytest.approx(a["router_confidence"], abs=1e-5)
    moe.router.detector.threshold.fill_(-1e9)  # everything is out of scope: every input abstains
    for a in moe.predict(rows[:3]):
        assert a["abstained"] and a["task"] is None and a["label"] is None and a["probabilities"] is None
        assert a["abstain_reason"] == "out_of_scope" and a["out_of_scope_score"] > -1e9
        assert set(a["router_probabilities"]) == {"senti", "nli", "quest"}


@pytest.mark.parametrize("path", ["auto", "merged", "factored", "contract"])
def test_a_bundle_loads_whole_onto_the_device_of_its_base(moe_bundle, path):
    """Every tensor of a loaded mixture (adapters, heads, router, detector) sits where the base model is.
    ``meta`` stands in for a GPU: expert files load onto the CPU, so a tensor left behind shows here."""
    from ttlora_moe.experts.base_model import load_base_model
    from ttlora_moe.moe.bundle import load_bundle, load_moe, serve_config

    bundle = load_bundle(moe_bundle[0])
    base = load_base_model(bundle.manifest["base_model"]["ref"])
    base.model.to("meta")
    serve = serve_config(bundle)
    moe = load_moe(bundle, base=base, serve=type(serve)(**{**vars(serve), "adapter_path": path}))
    assert {t.device.type for t in [*moe.parameters(), *moe.buffers()]} == {"meta"}


def _copy(moe_bundle, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(moe_bundle[0], target)
    return target


def test_load_bundle_refuses_a_tampered_file(moe_bundle, tmp_path):
    from ttlora_moe.moe.bundle import load_bundle

    b = _copy(moe_bundle, tmp_path)
    path = b / "experts" / "nli" / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BadInput, match=r"experts/nli/adapter.safetensors does not match its sha256") as info:
        load_bundle(b)
    assert "\n" not in str(info.value)


def test_load_bundle_refuses_a_missing_expert(moe_bundle, tmp_path):
    from ttlora_moe.moe.bundle import load_bundle

    b = _copy(moe_bundle, tmp_path)
    shutil.rmtree(b / "experts" / "quest")
    with pytest.raises(BadInput, match=r"experts/quest/.* is missing"):
        load_bundle(b)
    with pytest.raises(BadInput, match="manifest.json does not exist"):
        load_bundle(tmp_path)
