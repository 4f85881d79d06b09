"""Device names: auto picks what the machine has; a device it lacks is one line, before any model loads."""

from __future__ import annotations

import pytest
import torch

from ttlora_moe.devices import resolve_device
from ttlora_moe.errors import BadInput


def test_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == resolve_device("auto").type == resolve_device(" AUTO ").type
    assert resolve_device("auto").type in (expected, "mps")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


@pytest.mark.parametrize("name,message", [
    ("gpu", "unknown device 'gpu'"),
    ("cuda:x", "unknown device 'cuda:x'"),
    ("cuda:64", "device 'cuda:64' is not available"),
])
def test_bad_or_absent_devices_are_one_line(name, message):
    with pytest.raises(BadInput, match=message) as info:
        resolve_device(name)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_bad_input_before_the_model_loads(monkeypatch):
    from ttlora_moe.experts import base_model

    monkeypatch.setattr(base_model, "local_model_dir", lambda ref: pytest.fail("loaded a model for an absent device"))
    with pytest.raises(BadInput, match="torch sees no CUDA device"):
        base_model.load_base_model("any/model", device="cuda")


@pytest.fixture
def probe_device(monkeypatch):
    """params.yaml ``device: probe``: resolves (to the CPU) only through :func:`ttlora_moe.devices.params_device`,
    and every base model load records the device it was given."""
    from ttlora_moe import devices
    from ttlora_moe.experts import base_model, job
    from ttlora_moe.moe import build, evaluate

    seen: dict[str, list] = {"names": [], "loads": []}
    real_resolve, real_load = devices.resolve_device, base_model.load_base_model

    def resolve(spec=None):
        seen["names"].append(spec)
        return torch.device("cpu") if spec == "probe" else real_resolve(spec)

    def load(*args, device=None, **kwargs):
        seen["loads"].append(device)
        return real_load(*args, device=device, **kwargs)

    monkeypatch.setattr(devices, "resolve_device", resolve)
    for module in (job, build, evaluate, base_model):
        monkeypatch.setattr(module, "load_base_model", load, raising=False)
    return seen


def test_the_params_device_reaches_training_bundling_and_evaluation(moe_env, tmp_path, probe_device):
    from ttlora_moe.experts.job import train_expert
    from ttlora_moe.moe.build import build_bundle
    from ttlora_moe.moe.evaluate import evaluate_bundle

    params = {**moe_env["params"], "device": "probe",
              "train": {"epochs": 1, "batch_size": 8, "max_train_samples": 16, "evals_per_epoch": 1}}
    train_expert("senti", tmp_path / "senti", params=params, progress=False)
    e = moe_env["experts"]
    build_bundle([e["senti"], e["nli"]], tmp_path / "bundle", params=params, progress=False)
    evaluate_bundle(tmp_path / "bundle", params=params, out_of_scope_task="quest", progress=False, baselines=False)
    # training, the bundle's features, the evaluated mixture and each expert alone: four loads, all on the probe device
    assert probe_device["names"].count("probe") >= 3
    assert len(probe_device["loads"]) >= 4 and all(d == torch.device("cpu") for d in probe_device["loads"])
    # an explicit device beats params.yaml
    from ttlora_moe.devices import params_device

    assert params_device(params, "cpu") == torch.device("cpu") and probe_device["names"][-1] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [
    ["train-expert", "senti"],
    ["build-bundle", "--experts", "E", "--output", "OUT"],
    ["evaluate", "--bundle", "B"],
    ["predict", "--bundle", "B", "a text"],
])
def test_every_model_command_refuses_an_absent_device_in_one_line(moe_env, capsys, tmp_path, monkeypatch, command):
    from tests.conftest import run_cli
    from ttlora_moe.experts import base_model

    monkeypatch.setattr(base_model, "local_model_dir", lambda ref: pytest.fail("loaded a model for an absent device"))
    args = [{"E": moe_env["experts"]["senti"], "OUT": tmp_path / "out", "B": tmp_path}.get(a, a) for a in command]
    code, out, err = run_cli(capsys, *args, "--device", "cuda:1")
    assert code == 2 and out == ""
    assert err.strip().startswith("error: device 'cuda:1' is not available") and len(err.strip().splitlines()) == 1
