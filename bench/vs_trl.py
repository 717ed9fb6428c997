"""ling-rl vs TRL's GRPOTrainer on the same RL job, same box, runs interleaved.

Both train the same tiny Ling MoE (ling-rl's `--preset` tiny or small, seed 0; TRL loads the
exported folder through `AutoModelForCausalLM` + `trust_remote_code=True`) on the prompts of
data/arith/train.jsonl with the same template, 8 prompts x group size 8, `--response-tokens`
response tokens (32 by default), sampling at temperature 1, the `numeric_response` reward and
lr 1e-3, for the same number of steps.

What each side is: ling-rl runs its whole system (recipes/tiny_cpu.yaml: a vLLM CPU engine, one
FSDP2 learner rank here, a reward worker, Ray); TRL runs in one process (`use_vllm=False`,
`use_cpu=True`, transformers `generate`), and with `--trl-vllm` also TRL with vLLM in colocate
mode (`use_vllm=True, vllm_mode="colocate"`; where it fails, its error line is reported).

Every run is a fresh process; the sides alternate (ling-rl, TRL, ling-rl, TRL, ...) `--repeats`
times, so a change of load on the box hits both. Per run: s/step (mean over steps 2.., the
first step is start-up and warm-up), generated tokens per step, the wall time of the whole
process (imports, start-up, all steps) and the 1-minute load average before and after. The
summary gives the median and the spread (min-max) over the repeats; the last line, kept in this
form so runs stay comparable over time, is the ratio of the medians.

    .venv/bin/python bench/vs_trl.py [--steps 10] [--repeats 3] [--preset tiny|small]
        [--response-tokens 32] [--trl-vllm]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The script's folder comes first on sys.path; the project's packages come from the repository root.
sys.path[0] = str(ROOT)
PROMPTS, GROUP, LR = 8, 8, 1e-3
TEMPLATE = "Question: {prompt}\nAnswer:"


LING_RL_THREADS = ["cluster.learner.threads=2", "cluster.rollout.threads=2"]
"""Both sides compute with 2 threads (TRL's process: `torch.set_num_threads(2)`): the engine and
the one learner rank take turns in ling-rl's synchronous loop, so each gets both cores."""


def run_ling_rl(steps: int, run_dir: Path, preset: str, response_tokens: int,
                extra: list[str] | None = None) -> dict[str, float]:
    from ling_rl.config import load_recipe
    from ling_rl.driver.loop import train
    from ling_rl.tracking import read_metrics

    recipe = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", [*LING_RL_THREADS, *(extra or []),
        f"run.steps={steps}", f"model.tiny={preset}", "learner.num_ranks=1", f"learner.lr={LR}", f"rollout.prompts_per_step={PROMPTS}",
        f"rollout.group_size={GROUP}", f"rollout.max_response_tokens={response_tokens}",
        "rewards=[{name: numeric_response}]", "tracking.wandb.enabled=false", "tracking.progress_bar=false",
        "checkpoint.every=0", "checkpoint.export_hf=false"])
    start = time.perf_counter()
    train(recipe, run_dir)
    wall = time.perf_counter() - start
    rows = read_metrics(run_dir)[1:]
    step = statistics.mean(r["time/step"] for r in rows)
    tokens = statistics.mean(r["rollout/response_len_mean"] * r["batch/responses"] for r in rows)
    phases = {k.removeprefix("time/") + "_s": statistics.mean(r[k] for r in rows)
              for k in rows[0] if k.startswith("time/") and k != "time/step"}
    return {"wall_s": wall, "step_s": step, "tokens_per_step": tokens, **phases}


def run_trl(steps: int, model_dir: Path, out_dir: Path, response_tokens: int, use_vllm: bool) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.numeric_response import numeric_response

    torch.manual_seed(0)
    rows = [json.loads(line) for line in (ROOT / "data" / "arith" / "train.jsonl").read_text().splitlines()]
    data = Dataset.from_list([{"prompt": TEMPLATE.format(prompt=r["prompt"])} for r in rows])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)

    def reward(prompts: list[str], completions: list[str], **kwargs: object) -> list[float]:
        return numeric_response(prompts=prompts, completions=completions)

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimes()
    config = GRPOConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=PROMPTS * GROUP,
        gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=response_tokens,
        temperature=1.0, learning_rate=LR, lr_scheduler_type="constant", beta=0.0, use_cpu=True,
        use_vllm=use_vllm, **({"vllm_mode": "colocate", "trust_remote_code": True} if use_vllm else {}),
        bf16=False, gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"wall_s": wall, "step_s": statistics.mean(timer.times[1:]),
            "tokens_per_step": statistics.mean(lengths[1:]) * PROMPTS * GROUP}


SIDES = ("ling-rl", "TRL", "TRL+vLLM")


def run_one(side: str, steps: int, preset: str, response_tokens: int, model_dir: Path, out: Path) -> None:
    """One run in this (fresh) process; its result as JSON in `out`."""
    import torch

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(dir=out.parent))
    if side == "ling-rl":
        result = run_ling_rl(steps, work / "run", preset, response_tokens)
    else:
        result = run_trl(steps, model_dir, work / "trl", response_tokens, use_vllm=side == "TRL+vLLM")
    out.write_text(json.dumps(result))


def spawn(side: str, args: argparse.Namespace, model_dir: Path, tmp: Path, i: int) -> dict:
    """Run `side` in a fresh process: its result, wall time and the load average around it, or
    its error line when it failed."""
    out = tmp / f"{side}-{i}.json"
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", side, "--steps", str(args.steps), "--preset", args.preset,
                           "--response-tokens", str(args.response_tokens), "--model-dir", str(model_dir), "--out", str(out)],
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved")
    parser.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--response-tokens", type=int, default=32)
    parser.add_argument("--trl-vllm", action="store_true", help="also TRL with vLLM in colocate mode")
    parser.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)  # internal: one run in this process
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.steps, args.preset, args.response_tokens, args.model_dir, args.out)
        return
    from ling_rl.models.tiny import init_tiny

    sides = SIDES if args.trl_vllm else SIDES[:2]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_tiny(Path(tmp) / "model", preset=args.preset, seed=0)
        for i in range(args.repeats):
            for side in sides:
                runs[side].append(spawn(side, args, model_dir, Path(tmp), i))
    print(f"{args.steps} steps, {args.preset} preset, {PROMPTS} prompts x {GROUP} responses, "
          f"<= {args.response_tokens} tokens each; {args.repeats} runs per side, interleaved; "
          "median (min-max)")
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
