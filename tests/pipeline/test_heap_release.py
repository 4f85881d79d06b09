"""Heap release: it trims only once the process has grown by the set amount, and glibc's trim really
returns freed heap memory to the OS."""

from __future__ import annotations

import ctypes
import platform

import pytest

from ttlora_moe.moe.serve_config import ServeConfig
from ttlora_moe.pipeline.heap_release import HeapRelease, malloc_trim, resident_bytes
from ttlora_moe.pipeline.pyfunc import BasePyfunc

MB = 2**20


class FakeProcess:
    """A resident size the test sets, and a trim that drops it to ``live``."""

    def __init__(self) -> None:
        self.resident, self.live, self.trims = 500 * MB, 500 * MB, 0

    def trim(self) -> None:
        self.trims += 1
        self.resident = self.live


def test_trims_only_after_growing_past_the_limit_over_the_lowest_size_since_the_last_trim():
    proc = FakeProcess()
    release = HeapRelease(100, trim=proc.trim, resident=lambda: proc.resident)
    assert not release()  # the first call only sets where growth counts from
    proc.resident = 590 * MB
    assert not release() and proc.trims == 0
    proc.resident = 450 * MB  # shrank on its own: growth now counts from here
    assert not release()
    proc.resident = 560 * MB
    assert release() and proc.trims == 1 and proc.resident == 500 * MB
    proc.resident = 590 * MB  # 90 MB over the size after the trim
    assert not release() and proc.trims == 1
    proc.resident = 601 * MB
    assert release() and proc.trims == 2


def test_zero_or_no_trim_function_never_trims():
    proc = FakeProcess()
    off = HeapRelease(0, trim=proc.trim, resident=lambda: proc.resident)
    unreadable = HeapRelease(1, trim=proc.trim, resident=lambda: None)
    for size in (500, 5000):
        proc.resident = size * MB
        assert not off() and not unreadable()
    assert proc.trims == 0


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_glibc_returns_freed_heap_memory_to_the_os():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    assert malloc_trim() is not None
    release = HeapRelease(16)
    release()
    blocks = [libc.malloc(64 * 1024) for _ in range(640)]  # 40 MB of heap chunks (far below the mmap threshold)
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)  # resident now
    keep = libc.malloc(64 * 1024)  # above them on the heap, so freeing them cannot shrink the heap's top
    grown = resident_bytes()
    for block in blocks:
        libc.free(block)
    assert resident_bytes() > grown - 8 * MB  # freed, yet still resident: what a forward's activations leave
    assert release()
    assert resident_bytes() < grown - 24 * MB
    libc.free(keep)


def test_the_served_predict_releases_after_every_prediction_even_a_failed_one(monkeypatch):
    calls: list[str] = []

    class Recorder:
        def __init__(self, after_mb: float) -> None:
            calls.append(f"made {after_mb:g}")

        def __call__(self) -> bool:
            calls.append("release")
            return False

    def answer(rows):
        calls.append("predict")
        if rows[0]["text"] == "boom":
            raise RuntimeError("forward failed")
        return [{"norm": 1.0} for _ in rows]

    monkeypatch.setattr("ttlora_moe.pipeline.pyfunc.HeapRelease", Recorder)
    model = BasePyfunc()
    model.serve(answer, ServeConfig(release_heap_mb=64))
    assert model.answers([{"text": "a"}]) == [{"norm": 1.0}]
    with pytest.raises(RuntimeError, match="forward failed"):
        model.answers([{"text": "boom"}])
    assert calls == ["made 64", "predict", "release", "predict", "release"]
