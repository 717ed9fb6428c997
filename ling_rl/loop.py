"""The driver loop. One RL step, one role call per line:

    data.next_batch()            prompts (Sample)
        |
    rollout.generate()           vLLM engines: G responses per prompt, per-token log-probs
        |
    rewards.score()              reward workers: total reward + per-plugin breakdown
        |
    build_train_batch()          advantages (group-relative) + linguistic-unit segmentation
        |
    learner.train_step()         FSDP2 ranks: policy loss (lpo / ppo_token / gspo), mismatch correction
        |
    sync_weights()               learner -> engines; the next step's train/inference gap proves it
        |
    tracker.log(); checkpoint

Synchronous: generation of step n+1 starts after the weights of step n are synced.
"""

from __future__ import annotations

from pathlib import Path

from ling_rl import session as sessions
from ling_rl.batching import build_train_batch
from ling_rl.config import Recipe
from ling_rl.rollout.requests import make_requests, to_rollouts
from ling_rl.tracking import PhaseTimer


def train(recipe: Recipe, run_dir: Path) -> Path:
    """Run (or resume) `recipe` in `run_dir`; returns the final Hugging Face export or checkpoint."""
    s = sessions.start(recipe, run_dir)
    cfg = recipe.rollout
    last = recipe.run.steps - 1
    try:
        for step in range(s.start_step, recipe.run.steps):
            timer = PhaseTimer()
            samples = s.data.next_batch(cfg.prompts_per_step)
            with timer.phase("generate"):
                outputs = s.rollout.generate(make_requests(samples, cfg, step), cfg.temperature, cfg.top_p, cfg.top_k)
            rollouts = to_rollouts(samples, outputs, version=step)
            with timer.phase("reward"):
                scored, reward_metrics = s.rewards.score(rollouts)
            batch, batch_metrics = build_train_batch(scored, recipe.algorithm, s.segmenter, s.pad_id)
            with timer.phase("learner"):
                learner_metrics = s.learner.train_step(batch)
            with timer.phase("sync"):
                s.sync_weights(step + 1)
            # Logged before the checkpoint: a run killed during the save resumes after this step,
            # whose metrics must already be on disk.
            s.tracker.log(step, {**reward_metrics.as_dict(), **batch_metrics, **_rollout_metrics(rollouts),
                                 **{f"train/{k}" if "/" not in k else k: v for k, v in learner_metrics.items()},
                                 **timer.as_metrics()})
            if s.checkpointer.due(step, last):
                s.save(step)
        final = run_dir / "hf_final"
        if recipe.checkpoint.export_hf:
            s.learner.export_hf(str(final), str(s.model_dir))
        return final
    finally:
        s.close()


def _rollout_metrics(rollouts: list) -> dict[str, float]:
    lengths = [len(r.response_ids) for r in rollouts]
    return {
        "rollout/response_len_mean": sum(lengths) / len(lengths),
        "rollout/response_len_max": float(max(lengths)),
        "rollout/truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
    }
