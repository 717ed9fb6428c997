"""A/B of the policy losses on the quickstart task: LPO vs GRPO (ppo_token) vs GSPO, same seeds,
same DFT-warmed start, same everything else (recipes/quickstart.yaml without its DFT stage).

    .venv/bin/python bench/ab_losses.py MODEL_DIR [--steps 40] [--seeds 0] [--out bench/ab]

MODEL_DIR is a DFT-warmed model folder, e.g. the `hf_final/` of
`ling-rl train recipes/quickstart.yaml run.steps=1 learner.lr=1e-12` (one RL step at a negligible
learning rate leaves the DFT weights). Prints one row per loss and seed and writes each run's
`ling-rl report` under --out.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from ling_rl.config import load_recipe
from ling_rl.driver.loop import train
from ling_rl.tracking import read_metrics
from ling_rl.tracking.report import build_report

LOSSES = {"lpo": "lpo", "grpo": "ppo_token", "gspo": "gspo"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("bench/ab"))
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    print("| loss | seed | eval greedy start -> end (best) | eval sampled start -> end | reward first5 -> last5 | clip frac (unit) |")
    print("|---|---|---|---|---|---|")
    for name, loss in LOSSES.items():
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp) / f"{name}-{seed}"
                recipe = load_recipe(root / "recipes" / "quickstart.yaml", [
                    "model.tiny=null", f"model.path={args.model_dir}", "dft.enabled=false",
                    f"algorithm.loss.type={loss}", f"run.steps={args.steps}", f"run.seed={seed}",
                    f"rollout.seed={seed}", "tracking.wandb.enabled=false", "tracking.progress_bar=false",
                    "checkpoint.every=0", "checkpoint.export_hf=false"])
                train(recipe, run_dir)
                rows = read_metrics(run_dir)
                report_dir = args.out / f"{name}-{seed}"
                shutil.rmtree(report_dir, ignore_errors=True)
                build_report(run_dir, report_dir)
            evals = [r for r in rows if "eval/accuracy_greedy" in r]
            g = [r["eval/accuracy_greedy"] for r in evals]
            smp = [r["eval/accuracy_sampled"] for r in evals]
            rew = [r["reward/mean"] for r in rows]
            clip = statistics.mean(r["policy/clip_frac_unit"] for r in rows)
            print(f"| {name} | {seed} | {g[0]:.3f} -> {g[-1]:.3f} ({max(g):.3f}) | {smp[0]:.3f} -> {smp[-1]:.3f} | "
                  f"{statistics.mean(rew[:5]):.3f} -> {statistics.mean(rew[-5:]):.3f} | {clip:.3f} |", flush=True)


if __name__ == "__main__":
    main()
