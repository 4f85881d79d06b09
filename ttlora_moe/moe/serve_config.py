"""How a bundle serves (``serve:`` in params.yaml), recorded in its manifest so the registered model
serves the way it was built to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ttlora_moe.config_fields import Section, option
from ttlora_moe.errors import BadInput
from ttlora_moe.moe.expert_linear import ADAPTER_PATHS


@dataclass
class ServeConfig(Section):
    """Adapted-layer path, micro-batching and request limits of a served bundle."""

    section: ClassVar[str] = "serve"

    adapter_path: str = option("auto", "How adapted layers compute: merged (each expert's W + ΔW, built at load), "
                                       "factored (each expert's ΔW as two rank-r factors, per sample), contract "
                                       "(TT cores per sample), auto (merged for a batch of one expert, factored for a "
                                       "mixed batch; factored alone when the merged weights exceed merged_cache_mb).")
    merged_cache_mb: float = option(1024.0, "Largest memory the merged weights of all experts may take (auto).")
    batch_size: int = option(32, "Inputs per forward inside one prediction (length-sorted).")
    batch_rows: int = option(64, "Micro-batching: rows of concurrent requests gathered into one prediction.")
    batch_wait_ms: float = option(2.0, "Micro-batching: how long the worker waits for more rows before it runs.")
    max_pending_rows: int = option(4096, "Micro-batching: rows that may wait; more callers wait for room.")
    queue_timeout_s: float = option(30.0, "Micro-batching: how long a caller waits for room before HTTP 503 (keep it "
                                          "under MLflow's MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, 60 s by default).")
    release_heap_mb: float = option(256.0, "After a prediction, when the server's resident memory has grown by more than "
                                           "this, give the C heap's free memory back to the OS (glibc malloc_trim; 0: "
                                           "never). Keeps peak memory under load near idle.")
    max_rows: int = option(1024, "Rows per request; more is HTTP 400.")
    max_chars: int = option(20_000, "Characters of text + text_pair per row; more is HTTP 400.")
    log_base_model: bool = option(True, "Register the bundle with its base model's files, so serving needs no "
                                        "package or hub (a hub id is never copied: serving resolves it).")

    def __post_init__(self) -> None:
        if self.adapter_path not in ADAPTER_PATHS:
            raise BadInput(f"serve.adapter_path is {self.adapter_path!r}", f"use one of {', '.join(ADAPTER_PATHS)}")
        for key in ("batch_size", "batch_rows", "max_pending_rows", "max_rows", "max_chars"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadInput(f"serve.{key} must be a positive integer, got {value!r}", "fix params.yaml")
        for key in ("merged_cache_mb", "batch_wait_ms", "queue_timeout_s", "release_heap_mb"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise BadInput(f"serve.{key} must be a number >= 0, got {value!r}", "fix params.yaml")
