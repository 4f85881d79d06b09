"""The micro-batching queue: callers from many threads get their own answers in order, concurrent small
requests share one prediction, a failing batch fails only its callers, and a full queue pushes back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ttlora_moe.pipeline.micro_batching import MicroBatcher, Overloaded


def test_callers_get_their_own_answers_and_share_forwards():
    batches: list[int] = []

    def predict(rows: list[int]) -> list[int]:
        batches.append(len(rows))
        time.sleep(0.01)  # a forward: while it runs, the other callers' rows queue up
        return [r * 10 for r in rows]

    batcher = MicroBatcher(predict, max_rows=64, max_wait_ms=5)
    calls = [list(range(i, i + 1 + i % 7)) for i in range(200)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(batcher, calls))
    assert got == [[r * 10 for r in rows] for rows in calls]
    assert sum(batches) == sum(len(c) for c in calls)
    assert len(batches) < len(calls) / 3, batches  # most predictions served several callers at once


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on():
    def predict(rows: list[int]) -> list[int]:
        if -1 in rows:
            raise ValueError("bad batch")
        return rows

    batcher = MicroBatcher(predict, max_wait_ms=0)
    with pytest.raises(ValueError, match="bad batch"):
        batcher([1, -1])
    assert batcher([2, 3]) == [2, 3]


def test_a_caller_whose_rows_fail_a_shared_batch_fails_alone():
    release, batches = threading.Event(), []

    def predict(rows: list[int]) -> list[int]:
        batches.append(list(rows))
        release.wait(5)
        if -1 in rows:
            raise ValueError("bad row")
        return rows

    batcher = MicroBatcher(predict, max_rows=4, max_wait_ms=200)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(batcher, [0] * 4)  # a full batch: it holds the worker while the next three queue up
        time.sleep(0.05)
        calls = [pool.submit(batcher, rows) for rows in ([1, 2], [-1], [3])]
        time.sleep(0.05)
        release.set()
        assert first.result(timeout=5) == [0] * 4
        assert calls[0].result(timeout=5) == [1, 2] and calls[2].result(timeout=5) == [3]
        with pytest.raises(ValueError, match="bad row"):
            calls[1].result(timeout=5)
    assert sorted(batches[1]) == [-1, 1, 2, 3]  # they did share a batch, which failed
    assert sorted(map(tuple, batches[2:])) == [(-1,), (1, 2), (3,)]  # then each caller's rows went alone


def test_a_full_queue_pushes_back_then_times_out():
    release = threading.Event()

    def predict(rows: list[int]) -> list[int]:
        release.wait(5)
        return rows

    batcher = MicroBatcher(predict, max_rows=2, max_wait_ms=0, max_pending_rows=2, timeout_s=0.2)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(batcher, [1, 2])  # takes the whole capacity
        time.sleep(0.05)
        with pytest.raises(Overloaded, match="held 2 rows"):
            batcher([3])
        release.set()
        assert first.result(timeout=5) == [1, 2]
    assert batcher([4]) == [4]  # the capacity came back
