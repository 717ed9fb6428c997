"""A step whose batch carries no signal is skipped end to end: no update, no weight sync, and a
running count that survives a resume (real Ray, vLLM engine and learner ranks on the tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.vllm


def _train(run_dir: Path, steps: int) -> list[dict]:
    # A weight-0 reward: every total is 0, every group flat, every advantage zero.
    overrides = {
        "run.steps": steps, "run.output_dir": str(run_dir.parent), "run.name": run_dir.name,
        "rewards": "[{name: numeric_response, weight: 0}]", "rollout.prompts_per_step": 2,
        "rollout.group_size": 2, "rollout.max_response_tokens": 8, "tracking.progress_bar": False,
        "checkpoint.every": 1, "checkpoint.export_hf": False, "learner.num_ranks": 1,
    }
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", "train", str(ROOT / "recipes" / "tiny_cpu.yaml"),
                           *[f"{k}={v}" for k, v in overrides.items()]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_steps_without_signal_are_skipped_and_counted_across_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "flat"
    first = _train(run_dir, 1)
    assert [r["step"] for r in first] == [0]
    assert first[0]["train/skipped"] == 1.0 and first[0]["train/skipped_total"] == 1.0
    assert "time/sync" not in first[0] and "train/grad_norm" not in first[0]  # no update, no sync
    rows = _train(run_dir, 2)  # resumes from the step-1 checkpoint
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["train/skipped"] == 1.0 and rows[1]["train/skipped_total"] == 2.0
