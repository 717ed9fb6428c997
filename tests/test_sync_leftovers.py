"""The `shm_file` weight sync leaves no bucket files behind: not after a write that fails midway,
not after `close()`, and not after its driver is SIGKILLed (the watchdog removes them).

Up to a whole model sits in /dev/shm during a sync; the files live in `tmp_path` here (the method
writes wherever `rollout.weight_sync.dir` says). The learner is the real bucket writer of learner
rank 0 run in this process (`InProcessLearner`) on the tiny model (4 buckets of 1 MiB)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ling_rl.models.tiny import build_tiny_model
from ling_rl.rollout.config import RolloutConfig
from ling_rl.weightsync.methods import ShmFileSync
from ling_rl.weightsync.sender import InProcessLearner

ROOT = Path(__file__).resolve().parents[1]


def _sync(folder: Path, tag: str) -> ShmFileSync:
    cfg = RolloutConfig(weight_sync={"method": "shm_file", "bucket_mib": 1, "dir": str(folder)})
    # No engines: every case here ends before the engines would load (rollout is never called).
    return ShmFileSync(InProcessLearner(build_tiny_model()), None, cfg, "float32", tag)


def test_a_write_that_fails_midway_leaves_no_bucket_files(tmp_path: Path) -> None:
    sync = _sync(tmp_path, "123-run")
    # A folder where bucket 1 goes: bucket 0 is written, bucket 1's temporary file too, then its
    # rename fails (as a full /dev/shm or a dying learner would fail a write).
    (tmp_path / "ling-rl-123-run.1.safetensors").mkdir()
    with pytest.raises(IsADirectoryError):
        sync.sync(version=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ling-rl-123-run.1.safetensors"]


def test_close_removes_this_runs_leftovers_only(tmp_path: Path) -> None:
    ours = ["ling-rl-123-run.0.safetensors", "ling-rl-123-run.7.safetensors", ".ling-rl-123-run.8.safetensors.tmp"]
    others = ["ling-rl-123-run-2.0.safetensors", "ling-rl-123-run.x.safetensors", "ling-rl-124-run.0.safetensors",
              "keep.txt"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x" * 10)
    sync = _sync(tmp_path, "123-run")
    sync.close()
    sync.close()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)


_DRIVER = """
import sys, time
from pathlib import Path
from ling_rl.cluster.reaper import remove_after_driver, start_reaper
folder = Path(sys.argv[1])
reaper = start_reaper()
remove_after_driver(reaper, str(folder), r"\\.?ling-rl-42-run\\.\\d+\\.safetensors(\\.tmp)?")
for name in ("ling-rl-42-run.0.safetensors", ".ling-rl-42-run.1.safetensors.tmp", "ling-rl-43-run.0.safetensors"):
    (folder / name).write_bytes(b"x" * 1000)
(folder / "ling-rl-42-run.2.safetensors").mkdir()  # a folder is never removed
print("ready", flush=True)
time.sleep(300)
"""


def test_the_watchdog_removes_the_files_of_a_sigkilled_driver(tmp_path: Path) -> None:
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "ready"
        assert len(list(tmp_path.iterdir())) == 4
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 60  # the watchdog polls every 0.5 s, then kills (3 s grace at most)
        while (tmp_path / "ling-rl-42-run.0.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ling-rl-42-run.2.safetensors", "ling-rl-43-run.0.safetensors"]
    finally:
        if driver.poll() is None:
            driver.kill()
