"""Wall time per phase of an RL step, so every step logs where its time went."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_DERIVED = ("step", "other")


class PhaseTimer:
    """Accumulates seconds per named phase between two `as_metrics()` calls.

        timer = PhaseTimer()
        with timer.phase("generate"):
            ...
        tracker.log(step, {**metrics, **timer.as_metrics()})

    `time/step` is the wall time since the timer was created (or last read) and `time/other`
    the part of it spent outside any phase. Phases do not nest, so the phases and `time/other`
    add up to `time/step`.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start = clock()
        self._seconds: dict[str, float] = {}
        self._open: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name in _DERIVED or not name or "/" in name:
            raise ValueError(f"phase name {name!r}: use a plain word other than {' and '.join(_DERIVED)}")
        if self._open is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._open!r}; phases do not nest")
        self._open = name
        began = self._clock()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + self._clock() - began
            self._open = None

    def as_metrics(self) -> dict[str, float]:
        """`time/<phase>`, `time/other` and `time/step` in seconds; starts the next step's timing."""
        if self._open is not None:
            raise RuntimeError(f"as_metrics() called inside phase {self._open!r}")
        now = self._clock()
        step = now - self._start
        out = {f"time/{name}": seconds for name, seconds in self._seconds.items()}
        out["time/other"] = max(step - sum(self._seconds.values()), 0.0)
        out["time/step"] = step
        self._start = now
        self._seconds = {}
        return out
