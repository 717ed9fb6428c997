"""ling-rl vs TRL's GRPOTrainer on the same RL job, same box, runs interleaved.

`--task` picks the job; both sides read every setting of it from the same ling-rl recipe (loaded
with the overrides below), so they cannot drift apart:

- `arith` (default; the rows in bench/RESULTS.md before the reasoning task): recipes/tiny_cpu.yaml,
  the prompts of data/arith/train.jsonl with its template, the `numeric_response` reward, 8
  prompts x group size 8, 32 response tokens, temperature 1, lr 1e-3, one update per batch;
  ling-rl on one learner rank with 2 threads.
- `reasoning`: the reasoning task of recipes/quickstart.yaml (docs/reasoning-task.md): the
  prompts of data/reasoning/train.jsonl with its plain-text template (no chat template), 8 prompts
  x group size 8, 192 response tokens, temperature 1, lr 1e-4, 2 updates per batch (TRL:
  `num_iterations=2`, so one step below is one generation and two optimizer steps on both sides),
  rewards `exact_answer` and the recipe's `format` (mode instant) as the TRL function
  `instant_format` below. ling-rl keeps the recipe's learner (2 ranks, LPO, packing and balancing
  as the learner's defaults have them). What TRL has no counterpart for is left out of ling-rl's
  run: dynamic sampling (`curriculum.dynamic_sampling=false`: no refill rounds, a step is one
  generation round on both sides), the Evo-CoT stages and their length reward (the length term's
  alpha is 0 in stage `solve` anyway), evaluation and checkpoints.
  Both sides start from the same folder: the quickstart's DFT warm start, run once before the
  timed runs (`--dft-steps`, default the recipe's 600; exported as ling-rl's sweep does it) from
  the tiny init, so responses have the task's real length spread; `--dft-steps 0` starts both from
  the tiny init instead.

Rewards: the recipe's `rewards:` entries are names (`exact_answer`, or a file path with a
function for `instant_format`); ling-rl resolves them in its reward workers, and the TRL process
resolves the same names with ling-rl's own `find_plugin` and hands the function objects to
`GRPOTrainer` unchanged (they follow TRL's reward-function contract).

What each side is: ling-rl runs its whole system (a vLLM CPU engine, FSDP2 learner ranks, a
reward worker, Ray; the engine computes with 2 threads, as it has the box to itself while it
generates); TRL runs in one process with 2 threads (`torch.set_num_threads(2)`, `use_vllm=False`,
`use_cpu=True`, transformers `generate`, padding as it does by default), and with `--trl-vllm`
also TRL with vLLM in colocate mode (`use_vllm=True, vllm_mode="colocate"`; where it fails, its
error line is reported). Both load the model from the same folder (TRL through
`AutoModelForCausalLM` + `trust_remote_code=True`), fp32.

Every run is a fresh process; the sides alternate (ling-rl, TRL, ling-rl, TRL, ...) `--repeats`
times, so a change of load on the box hits both. Per run: s/step (mean over steps 2.., the
first step is start-up and warm-up), generated tokens per step, the wall time of the whole
process (imports, start-up, all steps) and the 1-minute load average before and after. The
summary gives the median and the spread (min-max) over the repeats; the last line, kept in this
form so runs stay comparable over time, is the ratio of the medians.

    .venv/bin/python bench/vs_trl.py [--task arith|reasoning] [--steps 10] [--repeats 3]
        [--preset tiny|small] [--response-tokens N] [--dft-steps N] [--trl-vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ling_rl.config import Recipe

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()


def instant_format(completions: list[str], **kwargs: Any) -> list[float | None]:
    """The reasoning recipe's `format` plugin (mode instant: -0.5 for a thinking tag, else 0.0) as
    a TRL reward function, which returns the scores alone (the plugin adds metrics)."""
    from rewards.format import Format

    return Format(mode="instant")(completions=completions).scores


@dataclass(frozen=True)
class Task:
    """One RL job, as a ling-rl recipe and the overrides that make it the job both sides run."""

    recipe: str
    """Path under the repository root."""
    rewards: tuple[str, ...]
    """Reward plugin names: the recipe's `rewards:` list, and what the TRL process resolves."""
    overrides: tuple[str, ...]
    """ling-rl settings of this job beyond the recipe (threads, ranks, what TRL lacks)."""


TASKS: dict[str, Task] = {
    "arith": Task(
        recipe="recipes/tiny_cpu.yaml",
        rewards=("numeric_response",),
        # The engine and the one learner rank take turns in the synchronous loop: each gets both cores.
        overrides=("learner.num_ranks=1", "cluster.learner.threads=2", "cluster.rollout.threads=2"),
    ),
    "reasoning": Task(
        recipe="recipes/quickstart.yaml",
        rewards=("exact_answer", f"{HERE}:instant_format"),
        overrides=("cluster.rollout.threads=2", "curriculum.dynamic_sampling=false", "curriculum.stages=[]",
                   "eval.every=0"),
    ),
}

QUIET = ["tracking.wandb.enabled=false", "tracking.progress_bar=false", "checkpoint.every=0"]


def start_overrides(task: Task, model_dir: Path) -> list[str]:
    """ling-rl's settings of `task` starting from the folder `model_dir` (the DFT start and the timed runs)."""
    rewards = json.dumps([{"name": name} for name in task.rewards])
    return [*task.overrides, *QUIET, f"rewards={rewards}", "model.tiny=null", f"model.path={model_dir}"]


def run_overrides(task: Task, model_dir: Path, steps: int, response_tokens: int | None) -> list[str]:
    """The overrides of a timed run of `task` (both sides load the recipe with them)."""
    budget = [f"rollout.max_response_tokens={response_tokens}"] if response_tokens else []
    return [*start_overrides(task, model_dir), *budget, f"run.steps={steps}", "dft.enabled=false",
            "checkpoint.export_hf=false"]


def load_task(task: Task, overrides: list[str]) -> Recipe:
    from ling_rl.config import load_recipe

    return load_recipe(ROOT / task.recipe, overrides)


def prepare_start(task: Task, preset: str, dft_steps: int | None, tmp: Path) -> Path:
    """The model folder both sides start from: the tiny init (seed 0), or, when the task's recipe
    warm-starts with DFT and `dft_steps` is not 0, the export of that DFT run from the tiny init."""
    from ling_rl.commands.sweep import DFT_ONLY, train
    from ling_rl.models.tiny import init_tiny

    init = init_tiny(tmp / "model", preset=preset, seed=0)
    recipe = load_task(task, [])
    if not recipe.dft.enabled or dft_steps == 0:
        return init
    steps = recipe.dft.steps if dft_steps is None else dft_steps
    dft_dir = tmp / "dft"
    # ling-rl sweep's shared-DFT run: the recipe's DFT, then one RL step at lr 1e-12, exported.
    overrides = [*start_overrides(task, init), *DFT_ONLY, f"dft.steps={steps}"]
    print(f"DFT start ({steps} steps, not timed): ling-rl train {task.recipe} {' '.join(overrides)}", flush=True)
    if train(ROOT / task.recipe, overrides, dft_dir) != 0:
        raise SystemExit(f"the DFT start failed; see its output above ({dft_dir})")
    return dft_dir / "hf_final"


def run_ling_rl(task: Task, overrides: list[str], run_dir: Path) -> dict[str, float]:
    from ling_rl.driver.loop import train
    from ling_rl.tracking import read_metrics

    recipe = load_task(task, overrides)
    start = time.perf_counter()
    train(recipe, run_dir)
    wall = time.perf_counter() - start
    rows = read_metrics(run_dir)[1:]
    step = statistics.mean(r["time/step"] for r in rows)
    tokens = statistics.mean(r["rollout/response_len_mean"] * r["batch/responses"] for r in rows)
    phases = {k.removeprefix("time/") + "_s": statistics.mean(r[k] for r in rows)
              for k in rows[0] if k.startswith("time/") and k != "time/step"}
    return {"wall_s": wall, "step_s": step, "tokens_per_step": tokens, **phases}


def run_trl(task: Task, overrides: list[str], model_dir: Path, out_dir: Path, use_vllm: bool) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ling_rl.curriculum.data import PromptSource
    from ling_rl.reward.loading import find_plugin

    recipe = load_task(task, overrides)
    rollout, learner = recipe.rollout, recipe.learner
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    # ling-rl's own prompt source renders the prompts: the same template and columns (`answer`, ...).
    samples = PromptSource(recipe.data, tok, rollout.max_prompt_tokens).samples
    data = Dataset.from_list([{**s.columns, "prompt": s.prompt} for s in samples])
    rewards = [find_plugin(spec.name)[0] for spec in recipe.rewards]
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimes()
    # TRL counts optimizer steps; with `num_iterations` k, one generation feeds k of them: an RL
    # step of ling-rl (one generation, `updates_per_batch` updates) is k TRL steps.
    k = learner.updates_per_batch
    config = GRPOConfig(
        output_dir=str(out_dir), max_steps=recipe.run.steps * k, num_iterations=k,
        per_device_train_batch_size=rollout.prompts_per_step * rollout.group_size, gradient_accumulation_steps=1,
        num_generations=rollout.group_size, max_completion_length=rollout.max_response_tokens,
        temperature=rollout.temperature, top_p=rollout.top_p, learning_rate=learner.lr, lr_scheduler_type="constant",
        beta=0.0, use_cpu=True, use_vllm=use_vllm,
        **({"vllm_mode": "colocate", "trust_remote_code": True} if use_vllm else {}),
        bf16=False, gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=0,
        dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    steps = [sum(timer.times[i:i + k]) for i in range(0, len(timer.times), k)]
    # Logged once per generation (TRL clears its metrics at every log, and only a generation adds them).
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"wall_s": wall, "step_s": statistics.mean(steps[1:]),
            "tokens_per_step": statistics.mean(lengths[1:]) * rollout.prompts_per_step * rollout.group_size}


SIDES = ("ling-rl", "TRL", "TRL+vLLM")


def run_one(args: argparse.Namespace) -> None:
    """One run in this (fresh) process; its result as JSON in `args.out`."""
    import torch

    torch.set_num_threads(2)
    task = TASKS[args.task]
    overrides = run_overrides(task, args.model_dir, args.steps, args.response_tokens)
    work = Path(tempfile.mkdtemp(dir=args.out.parent))
    if args.one == "ling-rl":
        result = run_ling_rl(task, overrides, work / "run")
    else:
        result = run_trl(task, overrides, args.model_dir, work / "trl", use_vllm=args.one == "TRL+vLLM")
    args.out.write_text(json.dumps(result))


def spawn(side: str, args: argparse.Namespace, model_dir: Path, tmp: Path, i: int) -> dict:
    """Run `side` in a fresh process: its result, wall time and the load average around it, or
    its error line when it failed."""
    out = tmp / f"{side}-{i}.json"
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    budget = ["--response-tokens", str(args.response_tokens)] if args.response_tokens else []
    proc = subprocess.run([sys.executable, __file__, "--one", side, "--task", args.task, "--steps", str(args.steps),
                           *budget, "--model-dir", str(model_dir), "--out", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - began
    run = {"side": side, "process_wall_s": wall, "load_before": load_before, "load_after": os.getloadavg()[0]}
    if proc.returncode != 0 or not out.exists():
        lines = [x for x in (proc.stderr + proc.stdout).splitlines() if "Error" in x or "error" in x]
        run["error"] = (lines or (proc.stderr + proc.stdout).splitlines() or ["no output"])[-1].strip()[:300]
    else:
        run.update(json.loads(out.read_text()))
    print(f"{side:9s} run {i + 1}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in run.items() if k != "side"), flush=True)
    return run


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    # The script's folder comes first on sys.path; the project's packages come from the repository root.
    sys.path[0] = str(ROOT)
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), default="arith", help="the RL job (module docstring)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved")
    parser.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--response-tokens", type=int, help="response budget (default: the task recipe's)")
    parser.add_argument("--dft-steps", type=int,
                        help="DFT steps of the shared start where the recipe has DFT (default: the recipe's; 0: tiny init)")
    parser.add_argument("--trl-vllm", action="store_true", help="also TRL with vLLM in colocate mode")
    parser.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)  # internal: one run in this process
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dft_steps is not None and args.dft_steps < 0:
        parser.error(f"--dft-steps must be 0 (start from the tiny init) or more, got {args.dft_steps}")
    if args.one:
        run_one(args)
        return
    task = TASKS[args.task]
    sides = SIDES if args.trl_vllm else SIDES[:2]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = prepare_start(task, args.preset, args.dft_steps, Path(tmp))
        rollout = load_task(task, run_overrides(task, model_dir, args.steps, args.response_tokens)).rollout
        for i in range(args.repeats):
            for side in sides:
                runs[side].append(spawn(side, args, model_dir, Path(tmp), i))
    print(f"{args.task} task, {args.steps} steps, {args.preset} preset, {rollout.prompts_per_step} prompts x "
          f"{rollout.group_size} responses, <= {rollout.max_response_tokens} tokens each; {args.repeats} runs per "
          "side, interleaved; median (min-max)")
    print(f"{'':9s} {'s/step':>18s} {'tokens/s':>20s} {'process wall s':>22s} {'load 1-min':>12s}")
    ok = {side: [r for r in rs if "error" not in r] for side, rs in runs.items()}
    for side in sides:
        loads = [x for r in runs[side] for x in (r["load_before"], r["load_after"])]
        if not ok[side]:
            print(f"{side:9s} failed: {runs[side][-1]['error']}")
            continue
        print(f"{side:9s} {spread([r['step_s'] for r in ok[side]]):>18s} "
              f"{spread([r['tokens_per_step'] / r['step_s'] for r in ok[side]]):>20s} "
              f"{spread([r['process_wall_s'] for r in ok[side]]):>22s} {min(loads):5.2f}-{max(loads):5.2f}")
    if not ok["ling-rl"] or not ok["TRL"]:
        raise SystemExit("no ratio: a side failed every run")
    ours = {k: statistics.median(r[k] for r in ok["ling-rl"]) for k in ("step_s", "tokens_per_step")}
    theirs = {k: statistics.median(r[k] for r in ok["TRL"]) for k in ("step_s", "tokens_per_step")}
    print(f"ratio ling-rl/TRL: steps/s {theirs['step_s'] / ours['step_s']:.2f}x, tokens/s "
          f"{(ours['tokens_per_step'] / ours['step_s']) / (theirs['tokens_per_step'] / theirs['step_s']):.2f}x")


if __name__ == "__main__":
    main()
