"""Helpers for tests that drive `ling-rl` in a child process."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for_path(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until `path` exists while `proc` is still running; fail with its output if it exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-4000:] if proc.stdout else "driver exited"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.5)
