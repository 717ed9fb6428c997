"""PhaseTimer: per-phase seconds, `time/other`, `time/step`, reset, misuse."""

from __future__ import annotations

import time

import pytest

from ling_rl.tracking import PhaseTimer


class StepClock:
    """A clock that reads the time set by the test, so the expected seconds are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_phases_other_and_step_add_up() -> None:
    clock = StepClock()
    timer = PhaseTimer(clock)
    with timer.phase("generate"):
        clock.now += 3.0
    clock.now += 0.5  # driver work between phases
    with timer.phase("reward"):
        clock.now += 1.0
    with timer.phase("generate"):  # a phase entered twice accumulates
        clock.now += 2.0
    clock.now += 0.25
    assert timer.as_metrics() == {"time/generate": 5.0, "time/reward": 1.0, "time/other": 0.75, "time/step": 6.75}


def test_as_metrics_starts_the_next_step() -> None:
    clock = StepClock()
    timer = PhaseTimer(clock)
    with timer.phase("learner"):
        clock.now += 4.0
    timer.as_metrics()
    with timer.phase("sync"):
        clock.now += 1.0
    assert timer.as_metrics() == {"time/sync": 1.0, "time/other": 0.0, "time/step": 1.0}


def test_phase_time_counts_when_the_body_raises() -> None:
    clock = StepClock()
    timer = PhaseTimer(clock)
    with pytest.raises(KeyError), timer.phase("reward"):
        clock.now += 2.0
        raise KeyError("boom")
    assert timer.as_metrics()["time/reward"] == 2.0


def test_real_clock() -> None:
    timer = PhaseTimer()
    with timer.phase("generate"):
        time.sleep(0.05)
    metrics = timer.as_metrics()
    assert 0.05 <= metrics["time/generate"] <= metrics["time/step"] < 5.0


def test_misuse_is_refused() -> None:
    timer = PhaseTimer(StepClock())
    for bad in ("step", "other", "", "a/b"):
        with pytest.raises(ValueError, match="phase name"), timer.phase(bad):
            pass
    with pytest.raises(RuntimeError, match="phases do not nest"), timer.phase("generate"), timer.phase("reward"):
        pass
    with timer.phase("generate"), pytest.raises(RuntimeError, match="inside phase 'generate'"):
        timer.as_metrics()
