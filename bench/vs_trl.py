"""ling-rl vs TRL's GRPOTrainer on the same tiny RL job, in one run.

Both train the same tiny Ling MoE (ling-rl's tiny preset, seed 0; TRL loads the exported folder
through `AutoModelForCausalLM` + `trust_remote_code=True`) on the prompts of
data/arith/train.jsonl with the same template, 8 prompts x group size 8, 32 response tokens,
sampling at temperature 1, the `numeric_response` reward and lr 1e-3, for the same number of steps.

What each side is: ling-rl runs its whole system (recipes/tiny_cpu.yaml: a vLLM CPU engine, one
FSDP2 learner rank here, a reward worker, Ray); TRL runs in this process (`use_vllm=False`,
`use_cpu=True`, transformers `generate`). Step time excludes the first step of each (start-up,
engine warm-up); tokens/s counts generated response tokens.

    .venv/bin/python bench/vs_trl.py [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The script's folder comes first on sys.path; the project's packages come from the repository root.
sys.path[0] = str(ROOT)
PROMPTS, GROUP, RESPONSE_TOKENS, LR = 8, 8, 32, 1e-3
TEMPLATE = "Question: {prompt}\nAnswer:"


def run_ling_rl(steps: int, run_dir: Path) -> dict[str, float]:
    from ling_rl.config import load_recipe
    from ling_rl.loop import train
    from ling_rl.tracking import read_metrics

    recipe = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", [
        f"run.steps={steps}", "learner.num_ranks=1", f"learner.lr={LR}", f"rollout.prompts_per_step={PROMPTS}",
        f"rollout.group_size={GROUP}", f"rollout.max_response_tokens={RESPONSE_TOKENS}",
        "rewards=[{name: numeric_response}]", "tracking.wandb.enabled=false", "tracking.progress_bar=false",
        "checkpoint.every=0", "checkpoint.export_hf=false"])
    start = time.perf_counter()
    train(recipe, run_dir)
    wall = time.perf_counter() - start
    rows = read_metrics(run_dir)[1:]
    step = statistics.mean(r["time/step"] for r in rows)
    tokens = statistics.mean(r["rollout/response_len_mean"] * r["batch/responses"] for r in rows)
    return {"wall_s": wall, "step_s": step, "tokens_per_step": tokens}


def run_trl(steps: int, model_dir: Path, out_dir: Path) -> dict[str, float]:
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
        gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=RESPONSE_TOKENS,
        temperature=1.0, learning_rate=LR, lr_scheduler_type="constant", beta=0.0, use_vllm=False, use_cpu=True,
        bf16=False, gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"wall_s": wall, "step_s": statistics.mean(timer.times[1:]),
            "tokens_per_step": statistics.mean(lengths[1:]) * PROMPTS * GROUP}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import torch

    from ling_rl.models.tiny import init_tiny

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_tiny(Path(tmp) / "tiny", preset="tiny", seed=0)
        ours = run_ling_rl(args.steps, Path(tmp) / "run")
        print(f"ling-rl: {ours}", flush=True)
        theirs = run_trl(args.steps, model_dir, Path(tmp) / "trl")
    print(f"{args.steps} steps, {PROMPTS} prompts x {GROUP} responses, <= {RESPONSE_TOKENS} tokens each")
    print(f"{'':8s} {'steps/s':>8s} {'tokens/s':>9s} {'s/step':>7s} {'wall s':>7s}")
    for name, r in (("ling-rl", ours), ("TRL", theirs)):
        print(f"{name:8s} {1 / r['step_s']:8.3f} {r['tokens_per_step'] / r['step_s']:9.0f} {r['step_s']:7.2f} {r['wall_s']:7.1f}")
    print(f"ratio ling-rl/TRL: steps/s {theirs['step_s'] / ours['step_s']:.2f}x, tokens/s "
          f"{(ours['tokens_per_step'] / ours['step_s']) / (theirs['tokens_per_step'] / theirs['step_s']):.2f}x")


if __name__ == "__main__":
    main()
