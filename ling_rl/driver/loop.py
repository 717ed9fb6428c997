"""The driver loop. One RL step, one role call per line:

    next_prompts()               curriculum: data mix, pass rates, length alpha per prompt
        |
    rollout.generate()           vLLM engines: G responses per prompt, per-token log-probs
        |
    rewards.score()              reward workers: total reward + per-plugin breakdown
        |
    collect_groups()             dynamic sampling: drop flat groups, refill (bounded)
    curriculum.update()          pass rates, rolling accuracy, stage advance
        |
    build_train_batch()          advantages (group-relative) + linguistic-unit segmentation
        |
    learner.train_step()         FSDP2 ranks: policy loss (lpo / ppo_token / gspo), mismatch correction
        |
    sync_weights()               learner -> engines; the next step's train/inference gap proves it
        |
    evaluate(); tracker.log(); checkpoint

Before the first step, an optional DFT warm start trains the learner with SFT (`dft:`).
Synchronous: generation of step n+1 starts after the weights of step n are synced.
"""

from __future__ import annotations

import json
from pathlib import Path

from ling_rl.driver import session as sessions
from ling_rl.driver.batching import build_train_batch
from ling_rl.config import Recipe
from ling_rl.curriculum.dynamic_sampling import collect_groups
from ling_rl.driver.evaluation import evaluate
from ling_rl.driver.interrupt import StopRequest
from ling_rl.reward.signal import NoRewardSignal, SignalMonitor
from ling_rl.rollout.requests import make_requests, to_rollouts
from ling_rl.tracking import PhaseTimer
from ling_rl.types import ScoredRollout


def train(recipe: Recipe, run_dir: Path) -> Path:
    """Run (or resume) `recipe` in `run_dir`; returns the final Hugging Face export folder."""
    s = sessions.start(recipe, run_dir)
    last = recipe.run.steps - 1
    stop = StopRequest.install()  # Ctrl-C / SIGTERM: finish the step, save it, exit 130 / 143
    monitor = SignalMonitor(recipe.reward_signal.max_failed_steps, recipe.rewards)  # no reward signal: stop
    try:
        if recipe.dft.enabled and s.start_step == 0:
            warm_start(s)
        # The starting point (after DFT, before any RL update) is logged with step 0.
        pending_eval = evaluate(s, -1) if recipe.eval.every and s.start_step == 0 else {}
        for step in range(s.start_step, recipe.run.steps):
            if stop.requested:
                raise stop.interrupted(step, _save_done(s, step))
            timer = PhaseTimer()
            first = score(s, timer, s.next_prompts(recipe.rollout.prompts_per_step, step), step)
            kept, dyn_metrics, seen = first, {}, first
            if recipe.curriculum.dynamic_sampling:
                kept, dyn_metrics, seen = collect_groups(first, lambda n: score(s, timer, s.next_prompts(n, step), step),
                                                         recipe.rollout.prompts_per_step, recipe.curriculum.max_refill_rounds,
                                                         s.curriculum.filter_value)
            cur_metrics = s.curriculum.update(step, seen)
            batch, batch_metrics = build_train_batch(kept, recipe.algorithm, s.segmenter, s.pad_id)
            with timer.phase("learner"):
                learner_metrics = s.learner.train_step(batch)
            # A batch without signal is skipped by the learner (`carries_signal`): the weights did
            # not change, so the engines keep theirs.
            s.skipped_steps += int(learner_metrics["skipped"])
            learner_metrics["skipped_total"] = float(s.skipped_steps)
            sync_metrics = {}  # sync/gather_s, sync/transfer_s, sync/load_s
            if not learner_metrics["skipped"]:
                with timer.phase("sync"):
                    sync_metrics = s.sync_weights(step + 1)
            eval_metrics, pending_eval = pending_eval, {}
            if recipe.eval.every and ((step + 1) % recipe.eval.every == 0 or step == last):
                with timer.phase("eval"):
                    eval_metrics = evaluate(s, step)
            # Logged before the checkpoint: a run killed during the save resumes after this step,
            # whose metrics must already be on disk.
            s.tracker.log(step, {**s.last_reward_metrics, **batch_metrics, **rollout_metrics(kept), **cur_metrics,
                                 **dyn_metrics, **eval_metrics,
                                 **train_metrics(learner_metrics),
                                 **sync_metrics, **timer.as_metrics(), **s.startup_metrics()})
            stalled = monitor.observe(step, s.last_reward_metrics, seen)  # why the signal is gone, or None
            if s.checkpointer.due(step, last) or stalled:
                s.save(step)
            if stalled:
                raise NoRewardSignal(f"{stalled}; saved checkpoint {s.checkpointer.complete()[-1]}")
        return export_final(s, run_dir)
    finally:
        stop.restore()
        s.close()


def _save_done(s: sessions.Session, step: int) -> Path | None:
    """The checkpoint of the steps done before `step`: the latest one if it holds them, else a new one."""
    done = s.checkpointer.complete()
    if done and s.checkpointer.step_of(done[-1]) == step:
        return done[-1]
    return s.save(step - 1) if step > s.start_step else (done[-1] if done else None)


def score(s: sessions.Session, timer: PhaseTimer, samples: list, step: int) -> list[ScoredRollout]:
    """Generate a group per prompt and score it. Refill rounds of dynamic sampling call this again
    within the step: their groups (and seeds) continue after the ones already generated."""
    cfg = s.recipe.rollout
    offset = 0 if not s.step_groups or s.step_groups[0] != step else s.step_groups[1]
    s.step_groups = (step, offset + len(samples))
    with timer.phase("generate"):
        requests = make_requests(samples, cfg, step, max_tokens=s.curriculum.max_response_tokens(), offset=offset)
        outputs = s.rollout.generate(requests, cfg.temperature, cfg.top_p, cfg.top_k)
    rollouts = to_rollouts(samples, outputs, version=step, group_offset=offset)
    with timer.phase("reward"):
        scored, metrics = s.rewards.score(rollouts)
    if offset == 0:  # the step's first round: the reward metrics of the policy as sampled
        s.last_reward_metrics = metrics.as_dict()
    return scored


def warm_start(s: sessions.Session) -> None:
    """DFT: SFT steps on the learner, logged to dft_metrics.jsonl, then the engines get the weights."""
    cfg, data = s.recipe.dft, s.dft_data
    with open(s.run_dir / "dft_metrics.jsonl", "w") as log:
        for i in range(cfg.steps):
            metrics = s.learner.sft_step(data.batch(s.pad_id), cfg.lr)
            log.write(json.dumps({"step": i, **metrics}) + "\n")
            log.flush()
            if i % 10 == 0 or i == cfg.steps - 1:
                s.tracker.console.console.print(f"dft {i + 1}/{cfg.steps} | loss {metrics['dft/loss']:.4g} | "
                                             f"token acc {metrics['dft/token_acc']:.3f}", markup=False, highlight=False)
    s.sync_weights(0)


def export_final(s: sessions.Session, run_dir: Path) -> Path:
    """The trained policy as a Hugging Face folder, `run_dir/hf_final` (unless `checkpoint.export_hf` is off)."""
    final = run_dir / "hf_final"
    if s.recipe.checkpoint.export_hf:
        s.learner.export_hf(str(final), str(s.model_dir))
    return final


def train_metrics(learner_metrics: dict[str, float]) -> dict[str, float]:
    """The learner's step metrics under `train/`, except those already named by section (`sync/...`)."""
    return {f"train/{k}" if "/" not in k else k: v for k, v in learner_metrics.items()}


def rollout_metrics(scored: list[ScoredRollout]) -> dict[str, float]:
    lengths = [len(x.rollout.response_ids) for x in scored]
    return {
        "rollout/response_len_mean": sum(lengths) / len(lengths),
        "rollout/response_len_max": float(max(lengths)),
        "rollout/truncated_frac": sum(x.rollout.finish_reason == "length" for x in scored) / len(scored),
    }
