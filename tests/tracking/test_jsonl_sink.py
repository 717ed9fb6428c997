"""metrics.jsonl: content, flushing, resume truncation, reading back."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ling_rl.tracking import METRICS_FILE, JsonlSink, read_metrics


def _log_steps(run_dir: Path, steps: range, resume_step: int | None = None) -> None:
    sink = JsonlSink(run_dir, resume_step)
    for step in steps:
        sink.log(step, {"reward/mean": step / 10, "time/step": 1.0})
    sink.close()


def test_one_object_per_step_with_step_time_and_metrics(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(3))
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert list(first)[:2] == ["step", "time"]
    assert first["step"] == 0 and first["reward/mean"] == 0.0 and first["time/step"] == 1.0
    assert abs(first["time"] - time.time()) < 60
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]


def test_non_finite_values_are_null(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, None)
    sink.log(0, {"train/loss": math.nan, "train/grad_norm": math.inf, "x/neg": -math.inf, "x/ok": 2.5})
    sink.close()
    text = (tmp_path / METRICS_FILE).read_text()
    assert "NaN" not in text and "Infinity" not in text
    (record,) = read_metrics(tmp_path)
    assert record["train/loss"] is None and record["train/grad_norm"] is None and record["x/neg"] is None
    assert record["x/ok"] == 2.5


def test_each_line_is_on_disk_before_close(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, None)
    sink.log(0, {"reward/mean": 1.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]
    sink.close()


def test_sigkill_loses_no_written_step(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from ling_rl.tracking.jsonl import JsonlSink\n"
        "sink = JsonlSink(sys.argv[1], None)\n"
        "for step in range(5):\n"
        "    sink.log(step, {'reward/mean': float(step)})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=Path(__file__).parents[2])
    assert proc.returncode == -signal.SIGKILL
    assert [r["reward/mean"] for r in read_metrics(tmp_path)] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_resume_drops_steps_after_resume_step_and_appends(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(6))
    _log_steps(tmp_path, range(3, 5), resume_step=2)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert records[3]["reward/mean"] == 0.3


def test_resume_drops_a_torn_last_line(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(3))
    with (tmp_path / METRICS_FILE).open("a") as f:
        f.write('{"step": 3, "time": 1.0, "reward/me')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    _log_steps(tmp_path, range(3, 4), resume_step=10)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]


def test_fresh_start_replaces_an_old_file(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(4))
    _log_steps(tmp_path, range(2), resume_step=None)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]


def test_steps_must_increase(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(3))
    sink = JsonlSink(tmp_path, resume_step=2)
    with pytest.raises(ValueError, match="step 2 logged after step 2"):
        sink.log(2, {"reward/mean": 0.0})
    sink.close()


def test_read_metrics_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=METRICS_FILE):
        read_metrics(tmp_path)
    (tmp_path / METRICS_FILE).write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}:2: not a JSON line"):
        read_metrics(tmp_path)
    (tmp_path / METRICS_FILE).write_text('{"reward/mean": 1.0}\n')
    with pytest.raises(ValueError, match="integer 'step'"):
        read_metrics(tmp_path)


def test_truncation_keeps_the_old_file_whole_until_replaced(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(4))
    _log_steps(tmp_path, range(0), resume_step=1)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    assert sorted(os.listdir(tmp_path)) == [METRICS_FILE]  # no temp file left behind
