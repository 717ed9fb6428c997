"""`rubric`: weighted rubric items scored by a judge (RubriX); R = weighted mean of item scores.

Rubric items are a list of `{criterion: str, weight: float}` (weight defaults to 1.0), taken from
the sample's `rubric` column when present, else from the recipe's `args.rubric`:

    {"prompt": "Explain DNS to a child.",
     "rubric": [{"criterion": "Uses an everyday analogy", "weight": 2},
                {"criterion": "Mentions that names are turned into numbers", "weight": 1},
                {"criterion": "No jargon left unexplained", "weight": 1}]}

Each (response, item) is one judge request asking for a 0-10 score ending in `[[N]]` (also
accepted: `Score: N`, `N/10`; see `rewards.judge.parse_score`), scaled to [0, 1]. Items whose
answer cannot be parsed or whose request failed are left out of the weighted mean and counted; a
response with no scored item, or without any rubric, scores None (skipped). A call in which every
request failed raises `JudgeUnavailable` (the pool skips the responses, unless `error_value` is set).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.judge import JudgeClient, JudgeStats, JudgeUnavailable, truncate

SYSTEM_PROMPT = (
    "You are a strict grader. Given a prompt, a response and one criterion, rate how well the response "
    "meets the criterion from 0 (not at all) to 10 (fully). Think briefly, then end with the score in "
    "double brackets, e.g. [[7]]."
)


def validate_rubric(items: Any) -> list[dict[str, Any]]:
    """A rubric as a list of {criterion, weight}; raises ValueError naming a malformed item."""
    if isinstance(items, str):  # a JSON string column
        items = json.loads(items)
    if not isinstance(items, list):
        raise ValueError(f"rubric must be a list of {{criterion, weight}}, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("criterion"), str):
            raise ValueError(f"rubric[{i}] = {item!r}: needs a criterion (string)")
        weight = float(item.get("weight", 1.0))
        if weight < 0:
            raise ValueError(f"rubric[{i}]: weight must be >= 0, got {weight}")
        out.append({"criterion": item["criterion"], "weight": weight})
    return out


@reward("rubric")
class Rubric:
    """Score each response against weighted rubric items with a judge.

    Args (recipe `args`):
        judge: the judge endpoint and client settings (`rewards.judge.JudgeConfig`), required.
        rubric: default items for samples without a `rubric` column (list of {criterion, weight}).
        max_score: the top of the judge's scale (default 10).
        max_chars: prompt and response are cut to this many characters in the judge prompt.
        system_prompt: replaces `SYSTEM_PROMPT` (must keep a parseable score format).

    Metrics per call: `items` (judged), `unscored` (responses without any scored item) and the
    judge counters of `rewards.judge.JudgeStats`.
    """

    max_concurrent_calls = 1
    """One call at a time per worker, each with the judge's `max_concurrency` requests in flight, so
    the plugin's `timeout_s` bounds a call's own requests, not the queue of the worker's other calls
    (`ling_rl.reward.contract.MAX_CONCURRENT_CALLS`)."""

    def __init__(self, judge: dict[str, Any], rubric: list[dict[str, Any]] | None = None, max_score: float = 10.0,
                 max_chars: int = 4000, system_prompt: str = SYSTEM_PROMPT) -> None:
        self.client = JudgeClient(judge)
        self.default = validate_rubric(rubric) if rubric is not None else None
        self.max_score, self.max_chars, self.system_prompt = max_score, max_chars, system_prompt

    def startup_check(self) -> None:
        """Called once when the reward workers start: the judge must answer (`JudgeClient.check_endpoint`)."""
        self.client.check_endpoint()

    async def __call__(self, prompts: list[str], completions: list[str], rubric: list[Any] | None = None,
                       **columns: Any) -> RewardOutput:
        stats = JudgeStats()
        per_row = [validate_rubric(r) if r is not None else self.default for r in (rubric or [None] * len(completions))]
        jobs = [(i, item) for i, items in enumerate(per_row) for item in items or []]
        item_scores = await asyncio.gather(*(self._score(prompts[i], completions[i], item["criterion"], stats) for i, item in jobs))
        if jobs and stats.failed == len(jobs):
            raise JudgeUnavailable(f"rubric: all {len(jobs)} judge requests failed; last error: {stats.last_error}")
        weighted, weights = [0.0] * len(completions), [0.0] * len(completions)
        for (i, item), score in zip(jobs, item_scores):
            if score is not None:
                weighted[i] += item["weight"] * score
                weights[i] += item["weight"]
        scores: list[float | None] = [w / t if t > 0 else None for w, t in zip(weighted, weights)]
        return RewardOutput(scores, {**stats.metrics(), "items": float(len(jobs)),
                                     "unscored": float(sum(s is None for s in scores))})

    async def _score(self, prompt: str, completion: str, criterion: str, stats: JudgeStats) -> float | None:
        user = (f"[Prompt]\n{truncate(prompt, self.max_chars)}\n\n[Response]\n{truncate(completion, self.max_chars)}\n\n"
                f"[Criterion]\n{criterion}\n\nScore (0-{self.max_score:g}):")
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
        key = "rubric:" + hashlib.sha256("\x00".join((self.system_prompt, prompt, completion, criterion)).encode()).hexdigest()
        return await self.client.score(messages, stats, key, self.max_score)
