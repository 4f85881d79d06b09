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
