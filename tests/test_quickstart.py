"""The quickstart (recipes/quickstart.yaml), shortened for CI: tiny Ling MoE -> DFT warm start ->
Evo-CoT RL with LPO, dynamic sampling, two curriculum stages and held-out evaluation, then the
report. The full run's numbers are in README and bench/RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.vllm


def test_shortened_quickstart_learns_and_reports(tmp_path: Path) -> None:
    run_dir = tmp_path / "quickstart"
    overrides = [
        "dft.steps=150", "run.steps=6", "eval.every=3", "eval.max_prompts=64", "eval.samples=4",
        "curriculum.stages.0.max_steps=3", "checkpoint.every=0", "tracking.progress_bar=false",
        f"run.output_dir={tmp_path}",
    ]
    env = dict(os.environ, WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "ling_rl.cli", "train", "recipes/quickstart.yaml", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    dft = [json.loads(line) for line in (run_dir / "dft_metrics.jsonl").read_text().splitlines()]
    assert len(dft) == 150
    assert sum(r["dft/loss"] for r in dft[-10:]) / 10 < 0.3 * dft[0]["dft/loss"]

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    evals = [r for r in rows if "eval/accuracy_greedy" in r]
    assert [r["step"] for r in evals] == [0, 2, 5]  # starting point, every 3 steps, last
    # A random tiny model answers none of the held-out problems; after DFT + RL some are right.
    final = evals[-1]
    assert final["eval/accuracy_greedy"] + final["eval/accuracy_sampled"] > 0
    assert [r["curriculum/stage"] for r in rows] == [0, 0, 0, 1, 1, 1]  # stage 0 ends after 3 steps
    assert all(r["sync/gap_mean"] < 1e-2 for r in rows)

    report = subprocess.run([sys.executable, "-m", "ling_rl.cli", "report", str(run_dir)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert (run_dir / "report" / "report.md").is_file()
    assert (run_dir / "report" / "frontier.png").is_file()
