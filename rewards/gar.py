"""`gar`: group arena reward (Ling 2.0, 4.3.1) for open-ended prompts without a verifier.

A generative judge compares the responses of one group pairwise, round-robin, in both orders
(A/B then B/A, which cancels the judge's position bias). Each comparison gives response A
+`much_better` / +`better` / 0 / -`better` / -`much_better` (defaults 2 / 1 / 0 / -1 / -2) and
response B the opposite; a response's reward is the mean of its comparisons' scores, in
[-much_better, much_better]. Group normalization follows in the algorithm, as for any reward.

A group of n responses costs n(n-1) judge requests (cached per ordered pair, so re-scoring is free;
two identical responses are a tie without a request). A comparison whose verdict cannot be parsed,
or whose request failed after retries, is left out of the mean and counted (`parse_failures`,
`failed`); a response with no usable comparison scores None (skipped). A call in which every
request failed raises `JudgeUnavailable`, so the pool counts a failure and skips the responses (unless `error_value` is set).

Judge prompt: the prompt and both responses, asking for a final verdict as one of
`[[A>>B]]`, `[[A>B]]`, `[[A=B]]`, `[[B>A]]`, `[[B>>A]]` (see `rewards.judge.parse_verdict`).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.judge import JudgeClient, JudgeStats, JudgeUnavailable, parse_verdict, truncate

SYSTEM_PROMPT = (
    "You are an impartial judge. Compare two responses, A and B, to the user's prompt for helpfulness, "
    "correctness, depth and clarity. Ignore response order and length as such. Think briefly, then end with "
    "your final verdict, exactly one of: [[A>>B]] (A is much better), [[A>B]] (A is better), [[A=B]] (tie), "
    "[[B>A]] (B is better), [[B>>A]] (B is much better)."
)


@reward("gar", group_level=True)
class GroupArena:
    """Group arena reward: mean pairwise judge score of each response against the rest of its group.

    Args (recipe `args`):
        judge: the judge endpoint and client settings (`rewards.judge.JudgeConfig`), required.
        much_better: score of a "much better" verdict (default 2.0).
        better: score of a "better" verdict (default 1.0).
        max_chars: prompt and responses are cut to this many characters in the judge prompt.
        system_prompt: replaces `SYSTEM_PROMPT` (must keep the verdict format).

    Metrics per call: `comparisons` (ordered pairs judged), the judge counters of
    `rewards.judge.JudgeStats` (`requests`, `attempts`, `retries`, `timeouts`, `failed`,
    `cache_hits`, `parse_failures`) and `identical_pairs`.
    """

    max_concurrent_calls = 1
    """One call at a time per worker, each with the judge's `max_concurrency` requests in flight, so
    the plugin's `timeout_s` bounds a call's own requests, not the queue of the worker's other calls
    (`ling_rl.reward.contract.MAX_CONCURRENT_CALLS`)."""

    def __init__(self, judge: dict[str, Any], much_better: float = 2.0, better: float = 1.0,
                 max_chars: int = 4000, system_prompt: str = SYSTEM_PROMPT) -> None:
        self.client = JudgeClient(judge)
        self.much_better, self.better = much_better, better
        self.max_chars, self.system_prompt = max_chars, system_prompt

    def startup_check(self) -> None:
        """Called once when the reward workers start: the judge must answer (`JudgeClient.check_endpoint`)."""
        self.client.check_endpoint()

    async def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> RewardOutput:
        n = len(completions)
        stats = JudgeStats()
        prompt = prompts[0] if prompts else ""
        ordered = [(a, b) for a in range(n) for b in range(n) if a != b]
        identical = sum(1 for a, b in ordered if completions[a] == completions[b])
        to_ask = [(a, b) for a, b in ordered if completions[a] != completions[b]]
        verdicts = await asyncio.gather(*(self._compare(prompt, completions[a], completions[b], stats) for a, b in to_ask))

        totals, counts = [0.0] * n, [0] * n
        for a, b in ordered:
            if completions[a] == completions[b]:  # a tie, no need to ask
                counts[a] += 1
                counts[b] += 1
        for (a, b), v in zip(to_ask, verdicts):
            if v is None:
                continue
            totals[a] += v
            totals[b] -= v
            counts[a] += 1
            counts[b] += 1
        if to_ask and stats.failed == len(to_ask):
            raise JudgeUnavailable(f"gar: all {len(to_ask)} judge requests failed; last error: {stats.last_error}")
        scores: list[float | None] = [t / c if c else None for t, c in zip(totals, counts)]
        return RewardOutput(scores, {**stats.metrics(), "comparisons": float(len(to_ask)), "identical_pairs": float(identical)})

    async def _compare(self, prompt: str, a: str, b: str, stats: JudgeStats) -> float | None:
        """A's score against B from one judge verdict; None on request or parse failure."""
        user = (f"[User prompt]\n{truncate(prompt, self.max_chars)}\n\n[Response A]\n{truncate(a, self.max_chars)}\n\n"
                f"[Response B]\n{truncate(b, self.max_chars)}\n\nYour verdict:")
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
        key = "gar:" + hashlib.sha256("\x00".join((self.system_prompt, prompt, a, b)).encode()).hexdigest()
        answer = await self.client.chat(messages, stats, cache_key=key)
        if answer is None:
            return None
        verdict = parse_verdict(answer, self.much_better, self.better)
        if verdict is None:
            stats.parse_failures += 1
            self.client.total.parse_failures += 1
        return verdict
