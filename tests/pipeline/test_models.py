"""Resolving registered experts: latest, pinned, by alias."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.models import resolve_experts


def test_resolve_experts_latest_pinned_alias(registry_env, registered_experts, tmp_path):
    from mlflow import MlflowClient


    got = resolve_experts(tmp_path / "a")
    assert [(e["task"], e["version"]) for e in got] == [("toy", 1), ("toy2", 1)]
    assert all((Path(e["dir"]) / "adapter.safetensors").exists() for e in got)
    with pytest.raises(BadInput, match=r"expert-toy/7 does not exist \(known versions: 1\)"):
        resolve_experts(tmp_path / "b", versions={"toy": 7})
    with pytest.raises(BadInput, match="no version with alias 'prod'"):
        resolve_experts(tmp_path / "c", tasks=["toy"], alias="prod")
    MlflowClient().set_registered_model_alias("expert-toy", "prod", "1")
    assert resolve_experts(tmp_path / "d", tasks=["toy"], alias="prod")[0]["version"] == 1
    with pytest.raises(BadInput, match="task 'nope' has no registered expert"):
        resolve_experts(tmp_path / "e", tasks=["nope"])


