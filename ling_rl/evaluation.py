"""Held-out evaluation: greedy and sampled accuracy, mean response length, per-plugin rewards.

One function, `run_evaluation`, serves both the evaluation during training (`evaluate`, every
`eval.every` steps, with the run's engines and reward workers) and `ling-rl eval` (any exported
model or checkpoint, `ling_rl.eval_cli`). Correctness is the score of the reward plugin named by
`curriculum.correctness` (the same judge the curriculum uses), computed by the reward workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass
class EvalOutcome:
    """What one evaluation measured, and every response it scored."""

    metrics: dict[str, float]
    """`eval/accuracy_<mode>`, `eval/response_len_<mode>`, `eval/reward_<mode>` (mean total reward of
    the responses not skipped), `eval/reward_<mode>/<plugin>` (mean score, None left out), for
    mode greedy and sampled, and `eval/response_len_mean` (the sampled responses')."""
    generations: list[dict[str, Any]]
    """One record per response (greedy first, then sampled): `mode`, `id` (dataset row), `sample`
    (index among the prompt's responses), `prompt`, `completion`, `response_tokens`,
    `finish_reason`, `reward`, `rewards` (per plugin; None: skipped), `correct` (None: the
    correctness plugin skipped it), `answer` (the dataset's, when there is one)."""


def run_evaluation(samples: list[Any], rollout: Any, rewards: Any, cfg: EvalConfig, max_tokens: int, correctness: str,
                   correct_threshold: float, version: int) -> EvalOutcome:
    """Generate one greedy and `cfg.samples` sampled responses per prompt with the `rollout` engines
    (a `RolloutGroup`), score them with `rewards` (a `RewardPool`) and summarise. A response is
    correct when the `correctness` plugin scores it at least `correct_threshold`."""
    from ling_rl.rollout.engine import GenerationRequest
    from ling_rl.rollout.requests import to_rollouts

    metrics: dict[str, float] = {}
    generations: list[dict[str, Any]] = []
    for mode, n, temperature in (("greedy", 1, 0.0), ("sampled", cfg.samples, cfg.temperature)):
        requests = [GenerationRequest(prompt_ids=x.prompt_ids, n=n, seed=cfg.seed + i * n, max_tokens=max_tokens)
                    for i, x in enumerate(samples)]
        rollouts = to_rollouts(samples, rollout.generate(requests, temperature, 1.0, -1), version=version)
        scored, _ = rewards.score(rollouts)
        verdicts = [x.breakdown.get(correctness) for x in scored]
        counted = [v for v in verdicts if v is not None]
        metrics[f"eval/accuracy_{mode}"] = sum(v >= correct_threshold for v in counted) / max(len(counted), 1)
        metrics[f"eval/response_len_{mode}"] = sum(len(r.response_ids) for r in rollouts) / len(rollouts)
        kept = [x.reward for x in scored if not x.skipped]
        if kept:
            metrics[f"eval/reward_{mode}"] = sum(kept) / len(kept)
        for key in scored[0].breakdown if scored else ():
            values = [x.breakdown[key] for x in scored if x.breakdown[key] is not None]
            if values:
                metrics[f"eval/reward_{mode}/{key}"] = sum(values) / len(values)
        generations += [_record(mode, x, i % n, verdict, correct_threshold) for i, (x, verdict) in enumerate(zip(scored, verdicts))]
    metrics["eval/response_len_mean"] = metrics["eval/response_len_sampled"]
    return EvalOutcome(metrics, generations)


def _record(mode: str, scored: Any, index: int, verdict: float | None, threshold: float) -> dict[str, Any]:
    r = scored.rollout
    return {
        "mode": mode, "id": r.sample.id, "sample": index, "prompt": r.sample.prompt, "completion": r.response_text,
        "response_tokens": len(r.response_ids), "finish_reason": r.finish_reason, "reward": scored.reward,
        "skipped": scored.skipped, "rewards": dict(scored.breakdown),
        "correct": None if verdict is None else verdict >= threshold, "answer": r.sample.columns.get("answer"),
    }


def eval_prompts(recipe: Any, tokenizer: Any) -> Any:
    """The held-out prompts (`eval.data`, its first `eval.max_prompts` rows, in file order), read and
    rendered like the training prompts (`data:` keys: template, chat template, columns)."""
    from ling_rl.curriculum.data import PromptSource

    cfg = recipe.data.model_copy(update={"train": recipe.eval.data, "shuffle": False, "max_rows": recipe.eval.max_prompts})
    return PromptSource(cfg, tokenizer, recipe.rollout.max_prompt_tokens)


def evaluate(s: Any, step: int) -> dict[str, float]:
    """Metrics of the held-out evaluation with the run's current weights, engines and reward workers."""
    recipe = s.recipe
    return run_evaluation(s.eval_data.samples, s.rollout, s.rewards, recipe.eval, s.curriculum.max_response_tokens(),
                          recipe.curriculum.correctness, recipe.curriculum.correct_threshold, version=step).metrics
