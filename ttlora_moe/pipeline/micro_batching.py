"""A bounded micro-batching queue: concurrent small requests share one forward.

MLflow's scoring server calls ``predict`` from a pool of threads. Instead of every thread running
its own forward (small, padded batches competing for the same cores, and one glibc heap arena per
thread), each caller puts its rows on a queue and waits; one worker thread takes whatever is
waiting, up to ``max_rows`` rows (waiting at most ``max_wait_ms`` for more), runs one prediction
over all of it, and hands every caller its own answers in order. The queue is bounded by rows
(``max_pending_rows``): a caller that would overflow it waits, and gives up with an error after
``timeout_s`` instead of letting memory grow. When a shared prediction fails, each caller's rows are
tried again alone, so one caller's bad rows fail that caller only, never the clients it was batched with.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Row = TypeVar("Row")
Answer = TypeVar("Answer")


class Overloaded(RuntimeError):
    """The queue stayed full for the whole timeout."""


@dataclass
class _Job(Generic[Row]):
    rows: Sequence[Row]
    future: Future = field(default_factory=Future)


class MicroBatcher(Generic[Row, Answer]):
    """``batcher(rows) -> answers``, callable from any number of threads; ``predict`` runs in one worker thread."""

    def __init__(self, predict: Callable[[list[Row]], list[Answer]], max_rows: int = 64, max_wait_ms: float = 2.0,
                 max_pending_rows: int = 4096, timeout_s: float = 30.0) -> None:
        if max_rows < 1 or max_pending_rows < 1:
            raise ValueError("max_rows and max_pending_rows must be positive")
        self._predict = predict
        self.max_rows, self.max_wait_s, self.timeout_s = max_rows, max_wait_ms / 1000, timeout_s
        self.max_pending_rows = max_pending_rows
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._capacity = threading.Semaphore(max_pending_rows)
        self._worker = threading.Thread(target=self._run, name="ttlora-micro-batcher", daemon=True)
        self._worker.start()

    def __call__(self, rows: Sequence[Row]) -> list[Answer]:
        """The answers for ``rows``, in order (the worker's exception when their batch failed)."""
        if not rows:
            return []
        taken = self._reserve(len(rows))
        job: _Job[Row] = _Job(rows)
        self._queue.put(job)
        try:
            return job.future.result()
        finally:
            for _ in range(taken):
                self._capacity.release()

    def _reserve(self, n: int) -> int:
        """Take ``n`` row slots (at most the whole capacity, so one huge request cannot wait forever)."""
        n = min(n, self.max_pending_rows)
        deadline = time.monotonic() + self.timeout_s
        for taken in range(n):
            if not self._capacity.acquire(timeout=max(0.0, deadline - time.monotonic())):
                for _ in range(taken):
                    self._capacity.release()
                raise Overloaded(f"the serving queue held {self.max_pending_rows} rows for {self.timeout_s:g} s")
        return n

    def _gather(self, first: _Job[Row]) -> list[_Job[Row]]:
        """``first`` plus whatever else arrives before the batch is full or ``max_wait_ms`` has passed."""
        jobs, size = [first], len(first.rows)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_rows:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            jobs.append(job)
            size += len(job.rows)
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._gather(self._queue.get())
            try:
                answers = self._predict([row for job in jobs for row in job.rows])
            except BaseException as exc:  # the callers re-raise it; the worker lives on
                if len(jobs) == 1:
                    jobs[0].future.set_exception(exc)
                else:
                    for job in jobs:
                        self._answer_alone(job)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(answers[start : start + len(job.rows)])
                start += len(job.rows)

    def _answer_alone(self, job: _Job[Row]) -> None:
        """One caller's rows in a prediction of their own, after the batch it shared failed."""
        try:
            job.future.set_result(self._predict(list(job.rows)))
        except BaseException as exc:
            job.future.set_exception(exc)
