"""Ctrl-C and SIGTERM during training: stop after the current step, save it, say how to resume.

    stop = StopRequest.install()
    try:
        for step in ...:
            if stop.requested:
                raise stop.interrupted(step, checkpoint)   # the CLI prints it and exits 130 / 143
            ...
    finally:
        stop.restore()

The first SIGINT or SIGTERM only records the request (the step in flight finishes, so no role is
left half-way through a call); a second one raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal after saving its last completed step."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, where: str = "") -> None:
        self.exit_code = 128 + signum
        saved = f"saved checkpoint {checkpoint}" if checkpoint is not None else "no step completed, nothing saved"
        super().__init__(f"interrupted {where or f'at step {step}'}; {saved}; rerun the same command to resume")


class StopRequest:
    """Signal handlers for the training loop (main thread only); the previous ones come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def interrupted(self, step: int, checkpoint: Path | None, where: str = "") -> Interrupted:
        """The exception that ends the run; `where` replaces "at step N" (e.g. a DFT step)."""
        assert self.signum is not None
        return Interrupted(self.signum, step, checkpoint, where)

    @classmethod
    def install(cls) -> StopRequest:
        stop = cls()
        for sig in _SIGNALS:
            stop._previous[sig] = signal.signal(sig, stop._handle)
        return stop

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current step, then saving a checkpoint "
              "(Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
