"""`function`: the response's front-end code renders in headless Chromium without errors and passes
the sample's scripted checks.

The page is assembled from the response's code blocks (`rewards.codeblocks.page_html`: the HTML
block with CSS and JS blocks inlined), rendered by `rewards.browser` (one Chromium per worker,
a fresh context per page, a hard per-page time limit) and checked with the `checks` column (format:
see `rewards.browser`).

Score: 1.0 when the page loads with no console error and no uncaught exception and every check
passes; otherwise partial credit `partial_credit * passed / total`, where the checks plus
"no console or page error" are the `total` items. A response without HTML, or a page that does
not load in time, scores 0.0.
"""

from __future__ import annotations

from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.browser import RENDER_CACHE, RenderResult, validate_checks
from rewards.codeblocks import page_html


def render_completion(completion: str, checks: Any, timeout_s: float) -> RenderResult | None:
    """Render the page of one response (cached per worker); None when it holds no HTML."""
    html = page_html(completion)
    if html is None:
        return None
    return RENDER_CACHE.render(html, validate_checks(checks), timeout_s)


def function_score(result: RenderResult | None, partial_credit: float = 0.5) -> float:
    """1.0 for a clean page passing all checks, else partial credit (see the module docstring)."""
    if result is None or not result.loaded:
        return 0.0
    total = len(result.checks) + 1
    passed = result.checks_passed + (result.errors == 0)
    return 1.0 if passed == total else partial_credit * passed / total


def render_metrics(results: list[RenderResult | None]) -> dict[str, float]:
    """Shares over the call's responses: no HTML, load failures, timeouts; means of errors and
    passed-check rate over rendered pages; mean render seconds."""
    n = max(1, len(results))
    pages = [r for r in results if r is not None]
    checks = [c for r in pages for c in r.checks]
    return {
        "no_html": sum(r is None for r in results) / n,
        "not_loaded": sum(not r.loaded for r in pages) / n,
        "timeouts": sum(r.timed_out for r in pages) / n,
        "errors_per_page": sum(r.errors for r in pages) / max(1, len(pages)),
        "checks_passed": sum(c.passed for c in checks) / len(checks) if checks else 1.0,
        "render_s": sum(r.elapsed_s for r in pages) / max(1, len(pages)),
    }


@reward("function")
class Function:
    """Render each response's page and run its scripted checks.

    Args (recipe `args`):
        timeout_s: per-page time limit in seconds (load, checks, screenshot), default 10. Set the
            plugin's `timeout_s` (per call) to cover a whole slice of the batch.
        partial_credit: the most a page with an error or a failed check can score (default 0.5).

    Dataset column `checks`: the scripted checks (list of {type: exists|click|text, selector,
    expect, target, count}); without it only "renders without errors" is checked.
    """

    def __init__(self, timeout_s: float = 10.0, partial_credit: float = 0.5) -> None:
        self.timeout_s, self.partial_credit = timeout_s, partial_credit

    def __call__(self, completions: list[str], checks: list[Any] | None = None, **columns: Any) -> RewardOutput:
        per_row = checks or [None] * len(completions)
        results = [render_completion(c, k, self.timeout_s) for c, k in zip(completions, per_row)]
        scores: list[float | None] = [function_score(r, self.partial_credit) for r in results]
        return RewardOutput(scores, render_metrics(results))
