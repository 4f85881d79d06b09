"""Run a function on a short-lived thread of its own: how a served pyfunc loads its model.

The OpenMP runtime behind PyTorch's CPU ops (libgomp) keeps a team of threads for every thread that has
ever run a parallel op, for as long as that thread lives. When its teams hold more threads than the
machine has cores, it stops spin-waiting between parallel regions: a team thread sleeps on a futex as
soon as it is idle, and the next op waits for it to wake. A pyfunc that builds tensors in MLflow's
loading thread (the bundle's merged weights and factor bank) and then serves from its micro-batching
worker kept two teams: on 2 cores the worker and its team thread each slept 10-20% of the time inside
the forward's matmuls, and the server ran at 176% CPU where the base model's ran at 196% (the bundle
at 0.85-0.94x the base's throughput under concurrent load, in four runs). Loaded on a thread that then
ends, the team it made goes with it; the worker's is the only one left.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_on_own_thread(fn: Callable[[], T], name: str = "ttlora-load") -> T:
    """``fn()`` on a new thread that has ended when this returns; its result, or its exception raised here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:  # leaving joins the thread
        return pool.submit(fn).result()
