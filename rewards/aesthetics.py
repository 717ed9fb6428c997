"""`aesthetics`: a score in [0, 1] for how the rendered page looks, through a pluggable scorer.

- With `judge` (an OpenAI-compatible vision model): the viewport screenshot (PNG) is sent as a
  base64 `data:image/png;base64,...` URL in a chat message with a rubric prompt; the answer's score
  (`[[N]]`, `Score: N`, `N/10`) is parsed and scaled to [0, 1]. Unparseable answers and failed
  requests are counted; such a response scores None (skipped), and a call where every request
  failed raises (the pool counts a failure and leaves the responses unscored, unless the plugin
  sets a numeric `error_value`).
- Without a judge: the deterministic layout proxy of `rewards.layout_score` (WCAG contrast,
  overflow, overlap, alignment, whitespace balance, palette size), computed from the page.

A response without HTML, or whose page did not load, scores 0.0 either way. On the layout proxy, a
page whose measurement failed or came back malformed (`rewards.layout_score.validate_layout`)
scores 0.0 alone (metric `layout_failed`): the other pages of the call keep their scores.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import threading
from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.browser import RenderResult
from rewards.function import render_completion
from rewards.judge import JudgeClient, JudgeStats, JudgeUnavailable
from rewards.layout_score import COMPONENTS, check_weights, layout_components, layout_score

RUBRIC_PROMPT = (
    "You are a senior web designer. Rate the visual design of this rendered web page from 0 to 10: "
    "layout and alignment, spacing and whitespace, typography and readability (contrast), colour "
    "harmony, polish (nothing broken, overlapping or cut off). Think briefly, then end with the score "
    "in double brackets, e.g. [[7]]."
)


def image_message(png: bytes, prompt: str) -> list[dict[str, Any]]:
    """One user chat message with a text part and the PNG as a base64 data URL (OpenAI vision format)."""
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return [{"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]}]


class VisionJudge:
    """Screenshot -> score in [0, 1] (or None) from a vision model behind an OpenAI-compatible API."""

    def __init__(self, judge: dict[str, Any], prompt: str = RUBRIC_PROMPT, max_score: float = 10.0) -> None:
        self.client = JudgeClient(judge)
        self.prompt, self.max_score = prompt, max_score

    async def score(self, png: bytes, stats: JudgeStats) -> float | None:
        key = "aesthetics:" + hashlib.sha256(self.prompt.encode() + png).hexdigest()
        return await self.client.score(image_message(png, self.prompt), stats, key, self.max_score)


class AestheticsScorer:
    """Scores rendered pages with the vision judge when configured, else with the layout proxy."""

    def __init__(self, judge: dict[str, Any] | None = None, layout_weights: dict[str, float] | None = None,
                 prompt: str = RUBRIC_PROMPT) -> None:
        self.judge = VisionJudge(judge, prompt) if judge else None
        self.layout_weights = check_weights(layout_weights)  # a bad recipe fails here, not per page
        # The plugin is sync, and the thread calling it has playwright's event loop running on it
        # (the sync API keeps it there after the first render), so no other loop may run there:
        # the judge requests run on a loop of their own thread, kept for the client's connections.
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.judge is not None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="aesthetics-judge", daemon=True).start()

    def startup_check(self) -> None:
        """The vision judge, if any, must answer (`JudgeClient.check_endpoint`); the layout proxy needs nothing."""
        if self.judge is not None:
            self.judge.client.check_endpoint()

    def score(self, results: list[RenderResult | None]) -> tuple[list[float | None], dict[str, float]]:
        if self.judge is None:
            return self._layout(results)
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._judged(results), self._loop)
        bound = self._bound_s(sum(r is not None and r.loaded for r in results))
        try:
            return future.result(timeout=bound)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise JudgeUnavailable(f"aesthetics: the judge requests of this call did not end within {bound:.0f} s") from None

    def _bound_s(self, pages: int) -> float:
        """The longest the judge requests of `pages` pages can take: every attempt timing out, with
        its backoff, in rounds of `max_concurrency`; plus a margin."""
        assert self.judge is not None
        cfg = self.judge.client.config
        per_request = (cfg.max_retries + 1) * cfg.timeout_s + sum(cfg.backoff_s * 2**a for a in range(cfg.max_retries))
        return -(-max(1, pages) // cfg.max_concurrency) * per_request + 30.0

    def _layout(self, results: list[RenderResult | None]) -> tuple[list[float | None], dict[str, float]]:
        scores: list[float | None] = []
        sums = dict.fromkeys(COMPONENTS, 0.0)
        pages = failed = 0
        for r in results:
            if r is None or not r.loaded:
                scores.append(0.0)
                continue
            try:
                if r.layout is None:  # the measurement failed (`r.layout_error`)
                    raise ValueError(r.layout_error or "no layout measured")
                components = layout_components(r.layout)
                score = layout_score(r.layout, self.layout_weights)
            except ValueError:
                # This page's measurements are unusable: it scores 0, the other pages keep theirs.
                failed += 1
                scores.append(0.0)
                continue
            pages += 1
            for name, value in components.items():
                sums[name] += value
            scores.append(score)
        metrics = {f"layout_{k}": v / max(1, pages) for k, v in sums.items()}
        metrics["layout_failed"] = failed / max(1, len(results))
        return scores, metrics

    async def _judged(self, results: list[RenderResult | None]) -> tuple[list[float | None], dict[str, float]]:
        assert self.judge is not None
        stats = JudgeStats()
        shots = [r.screenshot if r is not None and r.loaded else None for r in results]
        judged = await asyncio.gather(*(self.judge.score(png, stats) for png in shots if png is not None))
        if judged and stats.failed == len(judged):
            raise JudgeUnavailable(f"aesthetics: all {len(judged)} judge requests failed; last error: {stats.last_error}")
        it = iter(judged)
        return [next(it) if png is not None else 0.0 for png in shots], stats.metrics()


@reward("aesthetics")
class Aesthetics:
    """Score the look of each response's rendered page.

    Args (recipe `args`):
        judge: a vision judge's endpoint and client settings (`rewards.judge.JudgeConfig`);
            omitted: the deterministic layout proxy (`rewards.layout_score`).
        layout_weights: weights of the layout components (contrast, overflow, overlap, alignment,
            whitespace, palette), default equal.
        prompt: the judge's rubric prompt (default `RUBRIC_PROMPT`; must ask for a parseable score).
        timeout_s: per-page render time limit in seconds (default 10).

    Reads the `checks` column only to share renders with `function` in the same worker.
    """

    def __init__(self, judge: dict[str, Any] | None = None, layout_weights: dict[str, float] | None = None,
                 prompt: str = RUBRIC_PROMPT, timeout_s: float = 10.0) -> None:
        self.scorer = AestheticsScorer(judge, layout_weights, prompt)
        self.timeout_s = timeout_s

    def startup_check(self) -> None:
        """Called once when the reward workers start: a configured vision judge must answer."""
        self.scorer.startup_check()

    def __call__(self, completions: list[str], checks: list[Any] | None = None, **columns: Any) -> RewardOutput:
        per_row = checks or [None] * len(completions)
        results = [render_completion(c, k, self.timeout_s) for c, k in zip(completions, per_row)]
        scores, metrics = self.scorer.score(results)
        return RewardOutput(scores, metrics)
