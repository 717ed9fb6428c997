"""A real `ling-rl train` of recipes/tiny_cpu.yaml with `model.tiny=qwen3` (the `hf` backend):
Ray, a vLLM engine on the tiny dense Qwen3, two FSDP2 gloo learner ranks, reward workers. One
short run serves every assertion: each step trains, the engines hold the learner's weights after
every sync (small train/inference gap), and `ling-rl export` of its checkpoint loads in
transformers with the trained weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"
STEPS = 3

pytestmark = pytest.mark.vllm


def _cli(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_tiny_cpu_trains_a_qwen3_model(tmp_path: Path) -> None:
    import transformers

    run_dir = tmp_path / "run-qwen3"
    overrides = {"model.tiny": "qwen3", "run.steps": STEPS, "run.output_dir": str(tmp_path), "run.name": run_dir.name,
                 "rollout.prompts_per_step": 4, "rollout.group_size": 4, "learner.lr": 2e-3,
                 "rewards": "[{name: numeric_response}]", "tracking.progress_bar": False,
                 "checkpoint.every": STEPS, "checkpoint.export_hf": False}
    proc = _cli(["train", str(RECIPE), *(f"{k}={v}" for k, v in overrides.items())], timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS))
    trained = [r for r in rows if r["train/skipped"] == 0.0]
    assert trained and all(r["train/grad_norm"] > 0 for r in trained)
    gaps = [r["sync/gap_mean"] for r in trained]
    print(f"qwen3 tiny_cpu: reward {[round(r['reward/mean'], 3) for r in rows]}, sync/gap_mean {gaps}")
    assert max(gaps) < 1e-4, gaps  # fp32: the engine samples from the learner's weights

    exported = tmp_path / "exported"
    proc = _cli(["export", str(run_dir / "checkpoints" / f"step-{STEPS:06d}"), str(exported)], timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    start = transformers.AutoModelForCausalLM.from_pretrained(str(run_dir / "model_init"), dtype=torch.float32)
    moved = [k for k, v in start.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert moved, "the export holds the initial weights, not the trained ones"
