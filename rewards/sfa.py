"""`sfa`: the gated Syntax-Function-Aesthetics reward for front-end code (Ling-1T).

    R = 0                                                           if the code does not parse
    R = w_syntax * 1 + w_function * function + w_aesthetics * aesthetics   otherwise

with default weights 0.2 / 0.4 / 0.4 (docs/rewards-frontend.md). "Parses" is `syntax_ok`
from `rewards.syntax`: at least one code block and no tree-sitter error in any (embedded script
and style included). `function` and `aesthetics` are the scores of the plugins of those names,
computed from one render of the page per response.
"""

from __future__ import annotations

from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.aesthetics import RUBRIC_PROMPT, AestheticsScorer
from rewards.codeblocks import LANGUAGES, extract_blocks
from rewards.function import function_score, render_completion, render_metrics
from rewards.syntax import check_blocks, syntax_ok

DEFAULT_WEIGHTS = {"syntax": 0.2, "function": 0.4, "aesthetics": 0.4}


@reward("sfa")
class SyntaxFunctionAesthetics:
    """Gated Syntax-Function-Aesthetics combination.

    Args (recipe `args`):
        weights: {syntax, function, aesthetics} weights (default 0.2 / 0.4 / 0.4; all three keys).
        partial_credit: `function`'s cap for a page with an error or failed check (default 0.5).
        judge: a vision judge for the aesthetics part (default: the layout proxy).
        layout_weights, prompt: as for `aesthetics`.
        timeout_s: per-page render time limit in seconds (default 10).

    Metrics: `syntax_ok` (share passing the gate), `function`, `aesthetics` (means over gated-in
    responses) and the render metrics of `function`.
    """

    def __init__(self, weights: dict[str, float] | None = None, partial_credit: float = 0.5,
                 judge: dict[str, Any] | None = None, layout_weights: dict[str, float] | None = None,
                 prompt: str = RUBRIC_PROMPT, timeout_s: float = 10.0) -> None:
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        if set(self.weights) != set(DEFAULT_WEIGHTS):
            raise ValueError(f"sfa weights need exactly the keys {sorted(DEFAULT_WEIGHTS)}, got {sorted(self.weights)}")
        self.partial_credit, self.timeout_s = partial_credit, timeout_s
        self.aesthetics = AestheticsScorer(judge, layout_weights, prompt)

    def startup_check(self) -> None:
        """Called once when the reward workers start: a configured vision judge must answer."""
        self.aesthetics.startup_check()

    def __call__(self, completions: list[str], checks: list[Any] | None = None, **columns: Any) -> RewardOutput:
        per_row = checks or [None] * len(completions)
        gated = [syntax_ok(check_blocks([b for b in extract_blocks(c) if b.language in LANGUAGES])) for c in completions]
        # Only pages that pass the gate are rendered: the others score 0 whatever they look like.
        results = [render_completion(c, k, self.timeout_s) if ok else None for c, k, ok in zip(completions, per_row, gated)]
        function = [function_score(r, self.partial_credit) for r in results]
        looks, judge_metrics = self.aesthetics.score(results)
        w = self.weights
        scores: list[float | None] = []
        for ok, f, a in zip(gated, function, looks):
            if not ok:
                scores.append(0.0)
            elif a is None:  # the judge gave no usable score: skip rather than guess
                scores.append(None)
            else:
                scores.append(w["syntax"] + w["function"] * f + w["aesthetics"] * a)
        n_in = max(1, sum(gated))
        metrics = {
            "syntax_ok": sum(gated) / max(1, len(completions)),
            "function": sum(f for f, ok in zip(function, gated) if ok) / n_in,
            "aesthetics": sum(a or 0.0 for a, ok in zip(looks, gated) if ok) / n_in,
            **render_metrics([r for r, ok in zip(results, gated) if ok]),
            **judge_metrics,
        }
        return RewardOutput(scores, metrics)
