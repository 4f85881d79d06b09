"""Loading on a thread of its own: the result or the error comes back, and the thread has ended."""

from __future__ import annotations

import threading

import pytest

from ttlora_moe.errors import BadInput
from ttlora_moe.pipeline.own_thread import run_on_own_thread


def test_runs_on_a_thread_that_has_ended_and_returns_its_result():
    ran_on: list[threading.Thread] = []

    def load() -> int:
        ran_on.append(threading.current_thread())
        return 42

    assert run_on_own_thread(load) == 42
    assert ran_on[0] is not threading.current_thread() and not ran_on[0].is_alive()


def test_the_error_of_the_load_is_raised_to_the_caller():
    def load() -> None:
        raise BadInput("checksum mismatch in router.safetensors", "rebuild the bundle")

    with pytest.raises(BadInput, match="checksum mismatch"):
        run_on_own_thread(load)
