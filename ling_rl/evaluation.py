"""Held-out evaluation during training: greedy and sampled accuracy, mean response length.

Correctness is the score of the reward plugin named by `curriculum.correctness` (the same judge
the curriculum uses), computed by the run's reward workers.
"""

from __future__ import annotations

from pydantic import Field

from ling_rl.schema import Section


class EvalConfig(Section):
    """The `eval:` section."""

    every: int = Field(default=0, ge=0)
    """Evaluate every N RL steps and after the last (0: never). The starting point (after DFT,
    before any RL update) is evaluated too and logged with step 0; a later eval is logged with the
    step whose update it follows."""

    data: str | None = None
    """Held-out prompts (same columns as `data.train`); required when `every` > 0."""

    max_prompts: int = Field(default=64, ge=1)
    """First N rows of `data`."""

    samples: int = Field(default=4, ge=1)
    """Sampled responses per prompt (temperature `temperature`), beside one greedy response."""

    temperature: float = Field(default=1.0, gt=0)
    """Temperature of the sampled responses."""

    seed: int = 12345
    """Sampling seed (the same every evaluation, so curves compare like with like)."""


def evaluate(s, step: int) -> dict[str, float]:
    """Accuracy of greedy and sampled responses on the held-out prompts, with the current weights."""
    from ling_rl.rollout.engine import GenerationRequest
    from ling_rl.rollout.requests import to_rollouts

    cfg = s.recipe.eval
    samples = s.eval_data.samples
    max_tokens = s.curriculum.max_response_tokens()
    label = s.recipe.curriculum.correctness
    out: dict[str, float] = {}
    for mode, n, temperature in (("greedy", 1, 0.0), ("sampled", cfg.samples, cfg.temperature)):
        requests = [GenerationRequest(prompt_ids=x.prompt_ids, n=n, seed=cfg.seed + i * n, max_tokens=max_tokens)
                    for i, x in enumerate(samples)]
        rollouts = to_rollouts(samples, s.rollout.generate(requests, temperature, 1.0, -1), version=step)
        scored, _ = s.rewards.score(rollouts)
        verdicts = [x.breakdown.get(label) for x in scored]
        counted = [v for v in verdicts if v is not None]
        out[f"eval/accuracy_{mode}"] = sum(v >= s.recipe.curriculum.correct_threshold for v in counted) / max(len(counted), 1)
        out[f"eval/response_len_{mode}"] = sum(len(r.response_ids) for r in rollouts) / len(rollouts)
    out["eval/response_len_mean"] = out["eval/response_len_sampled"]
    return out
