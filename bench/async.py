"""Synchronous vs asynchronous RL on this box: recipes/tiny_cpu.yaml at rollout.max_staleness
k = 0, 1, 2, runs interleaved (k=0, k=1, k=2, k=0, ...) `--repeats` times, each a fresh
`ling-rl train` process.

The cores are split between the roles: the engine computes with 1 thread
(`cluster.rollout.threads=1`) and one learner rank with 1 thread (`learner.num_ranks=1`,
`cluster.learner.threads=1`), so on a 2-core box generation and training can overlap instead of
taking turns on both cores (tiny_cpu.yaml gives the engine 2 threads for that reason). k = 2
uses partial rollouts with `--k2-token-budget` tokens per call (16 of the 32 response tokens by
default; 0: whole responses). The reward is `numeric_response` only, lr 2e-3 (as the e2e tests).

Per run, over steps 2.. (step 0 is warm-up, step 1 of k >= 1 trains the first call's second
batch): steps/s, trained response tokens/s, each role's busy share of the wall time (engine:
`time/generate` of the synchronous loop, `async/engine_busy_s` of the asynchronous one;
learner: `time/learner`), the mean staleness, and the reward (`reward/mean`, the policy as
sampled) of the last 3 steps scored before the shortest run's wall time. `uptime` before and
after each run. Then the pipeline model from the k=0 runs' per-role times (sync step = gen +
train + sync + reward; async step = max(gen, train) + sync + reward) beside the measured ratio.
A ratio measured while other jobs load the box is not a result: rerun on a quiet box.

    .venv/bin/python bench/async.py [--steps 20] [--repeats 3] [--k2-token-budget 16] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"
SPLIT_CORES = ["learner.num_ranks=1", "cluster.learner.threads=1", "cluster.rollout.threads=1"]
"""One thread for the engine, one for the single learner rank: the two roles can run at once."""


def overrides(k: int, steps: int, run_dir: Path, k2_token_budget: int) -> list[str]:
    items = [f"run.steps={steps}", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
             "rewards=[{name: numeric_response}]", "learner.lr=2e-3", "tracking.progress_bar=false",
             "tracking.wandb.enabled=false", "checkpoint.every=0", "checkpoint.export_hf=false",
             f"rollout.max_staleness={k}", *SPLIT_CORES]
    if k >= 2 and k2_token_budget:
        items.append(f"rollout.token_budget={k2_token_budget}")
    return items


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_one(k: int, steps: int, run_dir: Path, k2_token_budget: int) -> dict:
    before = uptime()
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", "train", str(RECIPE),
                           *overrides(k, steps, run_dir, k2_token_budget)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"k={k}: ling-rl train failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"k": k, "rows": rows, "uptime_before": before, "uptime_after": uptime()}


def summarize(run: dict, wall_cut: float) -> dict[str, float]:
    rows = run["rows"][2:]
    wall = sum(r["time/step"] for r in rows)
    engine = sum(r.get("async/engine_busy_s", r.get("time/generate", 0.0)) for r in rows)
    learner = sum(r["time/learner"] for r in rows)
    elapsed, scored = 0.0, []
    for r in run["rows"]:
        elapsed += r["time/step"]
        if elapsed > wall_cut:
            break
        if "reward/mean" in r:
            scored.append(r["reward/mean"])
    return {
        "steps_per_s": len(rows) / wall,
        "tokens_per_s": sum(r["batch/response_tokens"] for r in rows) / wall,
        "engine_busy": engine / wall, "learner_busy": learner / wall,
        "wait_generate_s": statistics.mean(r.get("time/wait_generate", r.get("time/generate", 0.0)) for r in rows),
        "staleness_mean": statistics.mean(r.get("async/staleness_mean", 0.0) for r in rows),
        "reward_at_cut": statistics.mean(scored[-3:]) if scored else float("nan"),
        # Per-step role times (for the pipeline model, from the synchronous runs).
        "gen_s": statistics.mean(r.get("time/generate", 0.0) for r in rows),
        "train_s": statistics.mean(r["time/learner"] for r in rows),
        "sync_s": statistics.mean(r.get("time/sync", 0.0) for r in rows),
        "reward_s": statistics.mean(r.get("time/reward", 0.0) for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="runs per k, interleaved")
    parser.add_argument("--k2-token-budget", type=int, default=16, help="k=2's rollout.token_budget (0: none)")
    parser.add_argument("--out", type=Path, help="write every run's metrics and the summary here (JSON)")
    args = parser.parse_args()
    if args.steps < 6:
        parser.error("--steps must be at least 6 (steps 0 and 1 are left out)")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for k in (0, 1, 2):
                run = run_one(k, args.steps, Path(tmp) / f"k{k}-{rep}", args.k2_token_budget)
                print(f"k={k} repeat {rep}: before [{run['uptime_before']}] after [{run['uptime_after']}]", flush=True)
                runs.append(run)
    wall_cut = min(sum(r["time/step"] for r in run["rows"]) for run in runs)
    table = {k: [summarize(run, wall_cut) for run in runs if run["k"] == k] for k in (0, 1, 2)}
    print(f"\n{args.steps} steps per run, {args.repeats} run(s) per k, interleaved; cores split: engine 1 thread, "
          f"1 learner rank x 1 thread; k=2 token_budget {args.k2_token_budget or 'none'}; median (min-max) over runs")
    keys = ("steps_per_s", "tokens_per_s", "engine_busy", "learner_busy", "wait_generate_s", "staleness_mean",
            "reward_at_cut")
    for k, rows in table.items():
        cells = []
        for key in keys:
            values = [row[key] for row in rows]
            cells.append(f"{key} {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"k={k}: " + ", ".join(cells))
    print(f"reward_at_cut: reward/mean of the last 3 steps scored within {wall_cut:.1f} s (the shortest run)")
    sync = table[0]
    gen, train_s = statistics.median(r["gen_s"] for r in sync), statistics.median(r["train_s"] for r in sync)
    sync_s, reward_s = statistics.median(r["sync_s"] for r in sync), statistics.median(r["reward_s"] for r in sync)
    model = (gen + train_s + sync_s + reward_s) / (max(gen, train_s) + sync_s + reward_s)
    print(f"pipeline model from k=0's per-step times (gen {gen:.3f} s, train {train_s:.3f} s, sync {sync_s:.3f} s, "
          f"reward {reward_s:.3f} s): expected async/sync speed-up {model:.2f}x")
    for k in (1, 2):
        ratio = statistics.median(r["steps_per_s"] for r in table[k]) / statistics.median(r["steps_per_s"] for r in sync)
        print(f"measured k={k}/k=0 steps/s: {ratio:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "summary": {str(k): v for k, v in table.items()},
                                        "pipeline_model": model}, indent=1))


if __name__ == "__main__":
    main()
