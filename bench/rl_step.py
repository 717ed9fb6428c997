"""Step-time breakdown of the tiny CPU RL run (recipes/tiny_cpu.yaml): seconds per phase and each
phase's share of the step, from the run's own `time/*` metrics (first step excluded: warm-up).

    .venv/bin/python bench/rl_step.py [--steps 20] [extra overrides ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ling_rl.config import load_recipe
from ling_rl.driver.loop import train
from ling_rl.tracking import read_metrics

PHASES = ("generate", "reward", "learner", "sync", "other")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(root / "recipes" / "tiny_cpu.yaml", [
            f"run.steps={args.steps}", "tracking.wandb.enabled=false", "tracking.progress_bar=false",
            "checkpoint.every=0", "checkpoint.export_hf=false", *args.overrides])
        start = time.perf_counter()
        train(recipe, Path(tmp) / "run")
        wall = time.perf_counter() - start
        rows = read_metrics(Path(tmp) / "run")[1:]
    step = statistics.mean(r["time/step"] for r in rows)
    print(f"{len(rows) + 1} steps, wall {wall:.1f} s (start-up included), mean step {step:.3f} s")
    for phase in PHASES:
        t = statistics.mean(r.get(f"time/{phase}", 0.0) for r in rows)
        print(f"  {phase:9s} {t:7.3f} s  {t / step:6.1%}")
    print(f"  tokens/s generated: {statistics.mean(r['rollout/response_len_mean'] * r['batch/responses'] / r['time/step'] for r in rows):.0f}")


if __name__ == "__main__":
    main()
