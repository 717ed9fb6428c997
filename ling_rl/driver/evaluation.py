"""Held-out evaluation: greedy and sampled accuracy, mean response length, per-plugin rewards.

One function, `run_evaluation`, serves both the evaluation during training (`evaluate`, every
`eval.every` steps, with the run's engines and reward workers) and `ling-rl eval` (any exported
model or checkpoint, `ling_rl.commands.eval_cli`). Correctness is the score of the reward plugin named by
`curriculum.correctness` (the same judge the curriculum uses), computed by the reward workers.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from ling_rl.schema import Section


EVAL_SET = "eval_set"
"""Column that marks the rows of an `eval.extra_data` set (its name) among the held-out prompts."""


class EvalConfig(Section):
    """The `eval:` section."""

    every: int = Field(default=0, ge=0)
    """Evaluate every N RL steps and after the last (0: never). The starting point (after DFT,
    before any RL update) is evaluated too and logged with step 0; a later eval is logged with the
    step whose update it follows."""

    data: str | None = None
    """Held-out prompts (same columns as `data.train`); required when `every` > 0."""

    max_prompts: int = Field(default=64, ge=1)
    """First N rows of `data` (and of each `extra_data` set)."""

    extra_data: dict[str, str] = Field(default_factory=dict)
    """More held-out sets, name -> dataset (e.g. `{ood: data/reasoning/ood.jsonl}`, an
    out-of-distribution split), evaluated with `data` and logged apart as `eval/<name>/accuracy_greedy`,
    `eval/<name>/accuracy_sampled`, `eval/<name>/response_len_<mode>`, `eval/<name>/units_<mode>`.
    The `eval/...` metrics without a name stay those of `data` alone."""

    samples: int = Field(default=4, ge=1)
    """Sampled responses per prompt (temperature `temperature`), beside one greedy response."""

    temperature: float = Field(default=1.0, gt=0)
    """Temperature of the sampled responses."""

    seed: int = 12345
    """Sampling seed (the same every evaluation, so curves compare like with like)."""

    max_response_tokens: int | None = Field(default=None, ge=1)
    """Generation budget of every evaluation response; None: `rollout.max_response_tokens` (it may
    not exceed it, the engines' length budget). Never a curriculum stage's budget: the in-run
    curves stay comparable across stage changes, and `ling-rl eval` of a run's model, with the
    run's recipe, generates with the budget the run evaluated with."""


@dataclass
class EvalOutcome:
    """What one evaluation measured, and every response it scored."""

    metrics: dict[str, float]
    """`eval/accuracy_<mode>`, `eval/response_len_<mode>`, `eval/reward_<mode>` (mean total reward of
    the responses not skipped), `eval/reward_<mode>/<plugin>` (mean score, None left out), for
    mode greedy and sampled, and `eval/response_len_mean` (the sampled responses'); with a
    segmenter, `eval/units_<mode>` (mean linguistic units per response); the same accuracy, length
    and units metrics per `eval.extra_data` set as `eval/<name>/...`."""
    generations: list[dict[str, Any]]
    """One record per response (greedy first, then sampled): `mode`, `id` (dataset row), `sample`
    (index among the prompt's responses), `eval_set` (the `eval.extra_data` set's name; None for
    `eval.data`'s rows), `prompt`, `completion`, `prompt_tokens`, `response_tokens`,
    `finish_reason`, `reward`, `rewards` (per plugin; None: skipped), `correct` (None: the
    correctness plugin skipped it), `answer` (the dataset's, when there is one)."""


def run_evaluation(samples: list[Any], rollout: Any, rewards: Any, cfg: EvalConfig, max_tokens: int, correctness: str,
                   correct_threshold: float, version: int, segmenter: Any = None, episodes: Any = None) -> EvalOutcome:
    """Generate one greedy and `cfg.samples` sampled responses per prompt with the `rollout` engines
    (a `RolloutGroup`), score them with `rewards` (a `RewardPool`) and summarise. A response is
    correct when the `correctness` plugin scores it at least `correct_threshold`. Samples whose
    `EVAL_SET` column names an `eval.extra_data` set are summarised apart (see `EvalOutcome`);
    `segmenter` (a `Segmenter`) adds the units per response. With `episodes` (an `EpisodeRunner`,
    agentic runs) every response is a whole episode, and the `agent/*` counts of the greedy
    episodes are reported as `eval/agent/*`."""
    from ling_rl.rollout.engine import GenerationRequest
    from ling_rl.rollout.requests import to_rollouts

    metrics: dict[str, float] = {}
    generations: list[dict[str, Any]] = []
    for mode, n, temperature in (("greedy", 1, 0.0), ("sampled", cfg.samples, cfg.temperature)):
        if episodes is not None:
            from ling_rl.rollout.episodes import episode_metrics

            turns = episodes.cfg.max_turns
            rollouts = episodes.run(rollout, samples, n, lambda g, j, t: cfg.seed + (g * turns + t) * n + j,
                                    (temperature, 1.0, -1), max_tokens, version)
            if mode == "greedy":
                metrics.update({f"eval/{k}": v for k, v in episode_metrics(rollouts).items()})
        else:
            requests = [GenerationRequest(prompt_ids=x.prompt_ids, n=n, seed=cfg.seed + i * n, max_tokens=max_tokens)
                        for i, x in enumerate(samples)]
            rollouts = to_rollouts(samples, rollout.generate(requests, temperature, 1.0, -1), version=version)
        scored, _ = rewards.score(rollouts)
        verdicts = [x.breakdown.get(correctness) for x in scored]
        sets = [x.rollout.sample.columns.get(EVAL_SET) for x in scored]
        for name in dict.fromkeys(sets):
            rows = [i for i, s in enumerate(sets) if s == name]
            prefix = "eval/" if name is None else f"eval/{name}/"
            metrics.update(_summary(prefix, mode, [scored[i] for i in rows], [verdicts[i] for i in rows],
                                    correct_threshold, segmenter))
        main = [x for x, name in zip(scored, sets) if name is None]
        kept = [x.reward for x in main if not x.skipped]
        if kept:
            metrics[f"eval/reward_{mode}"] = sum(kept) / len(kept)
        for key in main[0].breakdown if main else ():
            values = [x.breakdown[key] for x in main if x.breakdown[key] is not None]
            if values:
                metrics[f"eval/reward_{mode}/{key}"] = sum(values) / len(values)
        generations += [_record(mode, x, i % n, verdict, correct_threshold) for i, (x, verdict) in enumerate(zip(scored, verdicts))]
    metrics["eval/response_len_mean"] = metrics["eval/response_len_sampled"]
    return EvalOutcome(metrics, generations)


def _summary(prefix: str, mode: str, scored: list[Any], verdicts: list[float | None], threshold: float,
             segmenter: Any) -> dict[str, float]:
    """Accuracy, mean response tokens and (with a segmenter) mean units of one set's responses."""
    counted = [v for v in verdicts if v is not None]
    out = {f"{prefix}accuracy_{mode}": sum(v >= threshold for v in counted) / max(len(counted), 1),
           f"{prefix}response_len_{mode}": sum(len(x.rollout.response_ids) for x in scored) / max(len(scored), 1)}
    if segmenter is not None:
        units = [max(segmenter.segment(x.rollout.response_ids), default=-1) + 1 for x in scored]
        out[f"{prefix}units_{mode}"] = sum(units) / max(len(units), 1)
    return out


def _record(mode: str, scored: Any, index: int, verdict: float | None, threshold: float) -> dict[str, Any]:
    r = scored.rollout
    return {
        "mode": mode, "id": r.sample.id, "sample": index, "eval_set": r.sample.columns.get(EVAL_SET),
        "prompt": r.sample.prompt, "completion": r.response_text,
        "prompt_tokens": len(r.sample.prompt_ids), "response_tokens": len(r.response_ids), "finish_reason": r.finish_reason, "reward": scored.reward,
        "skipped": scored.skipped, "rewards": dict(scored.breakdown),
        "correct": None if verdict is None else verdict >= threshold, "answer": r.sample.columns.get("answer"),
    }


def eval_prompts(recipe: Any, tokenizer: Any, tools: list[dict[str, Any]] | None = None) -> Any:
    """The held-out prompts (`eval.data`, its first `eval.max_prompts` rows, in file order), read and
    rendered like the training prompts (`data:` keys: template, chat template, columns; `tools`: an
    environment's tool schemas)."""
    from ling_rl.curriculum.data import PromptSource, load_rows

    cfg = recipe.data.model_copy(update={"train": recipe.eval.data, "shuffle": False, "max_rows": recipe.eval.max_prompts})
    if not recipe.eval.extra_data:
        return PromptSource(cfg, tokenizer, recipe.rollout.max_prompt_tokens, tools=tools)
    splits = recipe.data.splits
    rows = load_rows(recipe.eval.data, recipe.eval.max_prompts, split=splits.get(recipe.eval.data))
    for name, path in recipe.eval.extra_data.items():
        rows += [{**row, EVAL_SET: name} for row in load_rows(path, recipe.eval.max_prompts, split=splits.get(path))]
    return PromptSource(cfg, tokenizer, recipe.rollout.max_prompt_tokens, rows=rows, tools=tools)


def eval_max_tokens(recipe: Any) -> int:
    """The response budget of every evaluation of `recipe`, in the run and in `ling-rl eval`:
    `eval.max_response_tokens`, else `rollout.max_response_tokens`."""
    return recipe.eval.max_response_tokens or recipe.rollout.max_response_tokens


def evaluate(s: Any, step: int) -> dict[str, float]:
    """Metrics of the held-out evaluation with the run's current weights, engines and reward workers."""
    recipe = s.recipe
    segmenter = s.segmenter or unit_counter(s.tokenizer, recipe)
    return run_evaluation(s.eval_data.samples, s.rollout, s.rewards, recipe.eval, eval_max_tokens(recipe),
                          recipe.curriculum.correctness, recipe.curriculum.correct_threshold, version=step,
                          segmenter=segmenter, episodes=s.episodes).metrics


_UNIT_COUNTERS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
"""tokenizer -> segmentation settings (JSON) -> Segmenter. Weakly keyed by the tokenizer object:
keyed by `id()`, a new tokenizer allocated where a collected one lived would get its segmenter."""


def unit_counter(tokenizer: Any, recipe: Any) -> Any:
    """A `Segmenter` to count the units of responses in runs whose loss needs none (ppo_token,
    gspo), so that every loss type reports `eval/units_<mode>` as LPO cuts them. Built once per
    tokenizer and segmentation settings (a run evaluates many times)."""
    from ling_rl.algorithms import Segmenter
    from ling_rl.algorithms.segmentation import token_bytes_from_tokenizer

    cfg = recipe.algorithm.segmentation
    by_settings = _UNIT_COUNTERS.setdefault(tokenizer, {})
    key = cfg.model_dump_json()
    if key not in by_settings:
        by_settings[key] = Segmenter(token_bytes_from_tokenizer(tokenizer), cfg)
    return by_settings[key]
