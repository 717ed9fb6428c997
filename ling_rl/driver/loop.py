"""The driver loop: one RL step per iteration, one role call per line.

    strategy.next_batch()        generation strategy: prompts (curriculum data mix) -> vLLM engines
        |                        (G responses per prompt, per-token log-probs) -> reward workers ->
        |                        dynamic sampling (drop flat groups, refill, bounded)
    curriculum.update()          pass rates, rolling accuracy, stage advance
        |
    build_train_batch()          advantages (group-relative) + linguistic-unit segmentation
        |
    strategy.train()             FSDP2 ranks: policy loss (lpo / ppo_token / gspo), mismatch correction
        |
    strategy.after_train()       learner -> engines; the next step's train/inference gap proves it
        |
    evaluate(); tracker.log(); checkpoint

Before the first step, an optional DFT warm start trains the learner with SFT (`dft:`). The
generation strategy (ling_rl/driver/generation.py) is the one part that differs between synchronous
RL and k-stale RL with partial rollouts (`rollout.max_staleness`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ling_rl.config import Recipe
from ling_rl.driver import session as sessions
from ling_rl.driver.batching import build_train_batch
from ling_rl.driver.evaluation import evaluate
from ling_rl.driver.generation import GenerationStrategy, SynchronousGeneration
from ling_rl.driver.kstale import KStaleGeneration
from ling_rl.driver.interrupt import StopRequest
from ling_rl.reward.signal import NoRewardSignal, SignalMonitor
from ling_rl.rollout.episodes import EnvironmentFailures, FailureMonitor, episode_metrics
from ling_rl.tracking import PhaseTimer
from ling_rl.types import ScoredRollout


def train(recipe: Recipe, run_dir: Path) -> Path:
    """Run (or resume) `recipe` in `run_dir`; returns the final Hugging Face export folder."""
    s = sessions.start(recipe, run_dir)
    last = recipe.run.steps - 1
    stop = StopRequest.install()  # Ctrl-C / SIGTERM: finish the step, save it, exit 130 / 143
    monitor = SignalMonitor(recipe.reward_signal.max_failed_steps, sessions.reward_specs(recipe, s.environment))
    # Agentic runs: most episodes' environments failing step after step stops the run, the same way.
    env_monitor = (FailureMonitor(recipe.environment, s.environment.env_name or "tools")
                   if recipe.environment is not None else None)
    try:
        strategy = generation_strategy(s)
        if recipe.dft.enabled and s.start_step == 0:
            warm_start(s, stop)
        # The starting point (after DFT, before any RL update) is logged with step 0.
        pending_eval = evaluate(s, -1) if recipe.eval.every and s.start_step == 0 else {}
        for step in range(s.start_step, recipe.run.steps):
            if stop.requested:
                raise stop.interrupted(step, _save_done(s, strategy, step))
            timer = PhaseTimer()
            got = strategy.next_batch(step, timer)
            cur_metrics = s.curriculum.update(step, got.seen)
            batch, batch_metrics = build_train_batch(got.kept, recipe.algorithm, s.segmenter, s.pad_id, got.version)
            with timer.phase("learner"):
                learner_metrics = strategy.train(batch)
            # A batch without signal is skipped by the learner (`carries_signal`): no weight changed.
            s.skipped_steps += int(learner_metrics["skipped"])
            learner_metrics["skipped_total"] = float(s.skipped_steps)
            eval_due = bool(recipe.eval.every) and ((step + 1) % recipe.eval.every == 0 or step == last)
            # A k-stale step may train only on groups scored in earlier steps: nothing new to judge.
            stalled = monitor.observe(step, got.reward_metrics, got.seen) if got.seen else None
            seen = [x.rollout for x in got.seen]
            failing = env_monitor.observe(step, seen) if env_monitor is not None and seen else None
            save_due = s.checkpointer.due(step, last) or stalled is not None or failing is not None
            sync_metrics = strategy.after_train(step, bool(learner_metrics["skipped"]), timer,
                                                drain=eval_due or save_due, sync=eval_due)
            eval_metrics, pending_eval = pending_eval, {}
            if eval_due:
                with timer.phase("eval"):
                    eval_metrics = evaluate(s, step)
            # Logged before the checkpoint: a run killed during the save resumes after this step,
            # whose metrics must already be on disk.
            s.tracker.log(step, {**got.reward_metrics, **batch_metrics, **rollout_metrics(got.kept), **cur_metrics,
                                 **got.dynamic_metrics, **episode_metrics(seen), **eval_metrics, **train_metrics(learner_metrics),
                                 **sync_metrics, **strategy.step_metrics(step), **timer.as_metrics(),
                                 **s.startup_metrics()})
            if save_due:
                save(s, strategy, step)
            if stalled:
                raise NoRewardSignal(f"{stalled}; saved checkpoint {s.checkpointer.complete()[-1]}")
            if failing:
                raise EnvironmentFailures(f"{failing}; saved checkpoint {s.checkpointer.complete()[-1]}")
        return export_final(s, run_dir)
    finally:
        stop.restore()
        s.close()


def generation_strategy(s: sessions.Session) -> GenerationStrategy:
    """The strategy `rollout.max_staleness` asks for: 0 synchronous, k >= 1 k-stale with partial rollouts."""
    return KStaleGeneration(s) if s.recipe.rollout.max_staleness >= 1 else SynchronousGeneration(s)


def save(s: sessions.Session, strategy: GenerationStrategy, step: int) -> Path:
    """A checkpoint after `step`, with what the generation strategy holds (k-stale: the in-flight buffer)."""
    s.async_state = strategy.checkpoint_state()
    return s.save(step)


def _save_done(s: sessions.Session, strategy: GenerationStrategy, step: int) -> Path | None:
    """The checkpoint of the steps done before `step`: the latest one if it holds them, else a new one."""
    done = s.checkpointer.complete()
    if done and s.checkpointer.step_of(done[-1]) == step:
        return done[-1]
    return save(s, strategy, step - 1) if step > s.start_step else (done[-1] if done else None)


def warm_start(s: sessions.Session, stop: StopRequest) -> None:
    """DFT: SFT steps on the learner, logged to dft_metrics.jsonl, then the engines get the weights.
    A stop request ends it after the DFT step in flight (DFT is not checkpointed: a rerun starts it
    again), not after all of `dft.steps`."""
    cfg, data = s.recipe.dft, s.dft_data
    with open(s.run_dir / "dft_metrics.jsonl", "w") as log:
        for i in range(cfg.steps):
            if stop.requested:
                raise stop.interrupted(0, None, f"in DFT step {i + 1}/{cfg.steps}, before RL step 0")
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
