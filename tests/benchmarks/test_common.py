"""Benchmark timing plumbing: interleaved rounds in a shuffled order, ratios paired by round."""

import statistics

import pytest

from benchmarks.common import interleaved_medians, interleaved_times, paired_ratios


def test_interleaved_times_calls_each_once_per_round_in_a_seeded_shuffled_order():
    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    times = interleaved_times(runners, rounds=30, warmup=2)
    assert {name: len(t) for name, t in times.items()} == dict.fromkeys("abcd", 30)
    timed = calls[8:]  # after 2 warm-up calls each
    rounds = [timed[i:i + 4] for i in range(0, len(timed), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not always the same order
    calls.clear()
    interleaved_times(runners, rounds=30, warmup=2)
    assert calls[8:] == timed  # the same seed, the same order


def test_paired_ratios_cancel_a_drift_that_a_ratio_of_medians_does_not():
    # "adapted" costs 1.04x "base" within a round; the machine slowed down 2x for part of the run, which caught
    # the adapted call alone in two rounds and both calls in the last two
    times = {"base": [1.0, 1.0, 1.0, 2.0, 2.0], "adapted": [1.04, 2.08, 2.08, 2.08, 2.08]}
    assert paired_ratios(times, "base") == {"base": 1.0, "adapted": pytest.approx(1.04)}
    assert statistics.median(times["adapted"]) / statistics.median(times["base"]) == pytest.approx(2.08)


def test_interleaved_medians_are_the_median_of_the_rounds():
    assert set(interleaved_medians({"a": lambda: None, "b": lambda: None}, rounds=3)) == {"a", "b"}
