r"""`length`: Evo-CoT's dynamic length reward, computed inside each group (docs/evo-cot.md).

For the responses of one prompt, with lengths l in tokens (`completion_ids`), R_length by the arg
`design` (each a recipe option; docs/evo-cot.md compares them over seeds):

- `group` (default; Kimi k1.5's length reward), the range taken over the whole group:

      p(l) = 0.5 - (l - l_min) / (l_max - l_min + 1e-9)       in (-0.5, 0.5]
      R_length = p(l) if the response is correct else min(p(l), 0)

  so among correct answers the shortest earns +0.5 and the longest about -0.5, and a wrong answer
  is never paid for being short (a long wrong one is charged).
- `correct`: the same p(l), but l_min and l_max are the group's shortest and longest *correct*
  responses, and a wrong response gets 0: length only ranks correct answers against each other,
  so a correct answer is never charged for the length of a wrong one, and a wrong one is never
  paid or charged for its length (its reward is its correctness alone).
- `budget`: a per-prompt length budget from the prompt's pass rate r, measured on the group itself
  (its fraction of correct responses: the curriculum's `pass_rate` column is its prior, 0.5, for
  most prompts of a 4000-prompt set seen once or twice in a run). With c_min and c_max the shortest
  and longest correct responses,

      b = c_min + (1 - r) * (c_max - c_min)
      R_length = -0.5 * (l - b) / (c_max - b + 1e-9) if correct and l > b, else 0

  A prompt the policy always solves (r = 1) is budgeted at its shortest correct answer; a prompt it
  rarely solves keeps room up to its longest correct one. Never a bonus, never a charge below the
  budget, and wrong responses get 0.

score = alpha * R_length. Correctness comes from the `math` verifier or `exact_answer` (arg
`correctness`) against the `answer` column.

alpha, in this order of precedence (the same in training and in evaluation):

1. the arg `alpha`, when set: a constant, whatever the curriculum or the row says;
2. the `length_alpha` column: the Evo-CoT curriculum's stage alpha for the prompt's pass-rate
   bucket (`curriculum.stages[*].alpha`; training prompts only, evaluation prompts have none);
3. with a `pass_rate` column, the bucket table `alpha_buckets`: rows `[threshold, alpha]`,
   thresholds distinct and highest first; the row of the largest threshold the pass rate exceeds
   gives alpha, and the last row also takes every lower pass rate (the curriculum's rule:
   `ling_rl.curriculum.buckets.bucket_index`). The default is the Evo-CoT table (docs/evo-cot.md): > 0.8 -> 1.0,
   > 0.5 -> 0.5, > 0.2 -> 0.2, else 0.1, so easy prompts pay for brevity and hard ones leave room
   to reason;
4. else 1.0.

`alpha` and `alpha_buckets` together are an error (the table would never apply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ling_rl.curriculum.buckets import DEFAULT_ALPHA, bucket_index
from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.answers import answers_match, extract_answer
from rewards.math import verify_answer

DEFAULT_ALPHA_BUCKETS: list[list[float]] = [[float(edge), alpha] for edge, alpha in DEFAULT_ALPHA.items()]
"""The Evo-CoT default alpha per pass-rate bucket (the curriculum's table), as `[threshold, alpha]` rows."""

CORRECTNESS = ("math", "exact_answer")


def length_scores(lengths: list[int], correct: list[bool]) -> list[float]:
    """R_length of one group (before alpha), design `group`.

    >>> length_scores([10, 20, 30], [True, True, False])
    [0.5, 0.0, -0.5]
    >>> length_scores([10, 30], [False, False])
    [0.0, -0.5]
    """
    p = _position(lengths, min(lengths), max(lengths))
    return [round(v, 6) if ok else round(min(v, 0.0), 6) for v, ok in zip(p, correct)]


def correct_length_scores(lengths: list[int], correct: list[bool]) -> list[float]:
    """R_length of one group, design `correct`: ranked among the correct responses only.

    >>> correct_length_scores([10, 20, 30, 5], [True, True, True, False])
    [0.5, 0.0, -0.5, 0.0]
    >>> correct_length_scores([50, 5], [True, False])
    [0.5, 0.0]
    """
    right = [n for n, ok in zip(lengths, correct) if ok]
    if not right:
        return [0.0] * len(lengths)
    p = _position(lengths, min(right), max(right))
    return [round(v, 6) if ok else 0.0 for v, ok in zip(p, correct)]


def budget_length_scores(lengths: list[int], correct: list[bool]) -> list[float]:
    """R_length of one group, design `budget`: a charge for the tokens of a correct response beyond
    the prompt's budget b = c_min + (1 - r) * (c_max - c_min), r the group's fraction correct.

    >>> budget_length_scores([10, 20, 30, 40], [True, True, True, False])  # r = 0.75: b = 15
    [0.0, -0.166667, -0.5, 0.0]
    >>> budget_length_scores([10, 20, 30, 40], [True, True, False, False])  # r = 0.5: b = 15
    [0.0, -0.5, 0.0, 0.0]
    >>> budget_length_scores([10, 20, 30], [True, True, True])  # r = 1: b = c_min
    [0.0, -0.25, -0.5]
    """
    right = [n for n, ok in zip(lengths, correct) if ok]
    if not right:
        return [0.0] * len(lengths)
    rate = len(right) / len(lengths)
    low, high = min(right), max(right)
    budget = low + (1.0 - rate) * (high - low)
    return [round(-0.5 * (n - budget) / (high - budget + 1e-9), 6) if ok and n > budget else 0.0
            for n, ok in zip(lengths, correct)]


def _position(lengths: list[int], low: int, high: int) -> list[float]:
    """p(l) = 0.5 - (l - low) / (high - low + 1e-9) for each length."""
    return [0.5 - (n - low) / (high - low + 1e-9) for n in lengths]


DESIGNS: dict[str, Callable[[list[int], list[bool]], list[float]]] = {
    "group": length_scores,
    "correct": correct_length_scores,
    "budget": budget_length_scores,
}
"""R_length of one group by design (module docstring): (lengths, correctness) -> one score per
response, before alpha."""


@reward("length", group_level=True)
class Length:
    """alpha * R_length per response of one group (see the module docstring for the designs and
    alpha's precedence); args `design` (`group`, `correct`, `budget`), `alpha`, `alpha_buckets`,
    `correctness` (`math` or `exact_answer`).

    Rows without `answer` are skipped (None). Metrics: `alpha` (mean), `correct` (fraction),
    `length_mean` (tokens).

    >>> length = Length(correctness="exact_answer")
    >>> length(completions=["12", "so it is 12", "13"], completion_ids=[[1] * 2, [1] * 6, [1] * 2], answer=["12"] * 3).scores
    [0.5, -0.5, 0.0]
    >>> length(completions=["12", "so it is 12"], completion_ids=[[1] * 2, [1] * 6], answer=["12"] * 2, pass_rate=[0.3] * 2).scores
    [0.1, -0.1]
    >>> Length(alpha=0.2, correctness="exact_answer")(completions=["12", "so it is 12"], completion_ids=[[1] * 2, [1] * 6],
    ...     answer=["12"] * 2, length_alpha=[1.0] * 2).scores
    [0.1, -0.1]
    """

    def __init__(self, alpha: float | None = None, alpha_buckets: list[list[float]] | None = None,
                 correctness: str = "math", design: str = "group") -> None:
        if design not in DESIGNS:
            raise ValueError(f"length reward: design must be one of {', '.join(DESIGNS)}, got {design!r}")
        if correctness not in CORRECTNESS:
            raise ValueError(f"length reward: correctness must be one of {', '.join(CORRECTNESS)}, got {correctness!r}")
        if alpha is not None and alpha_buckets is not None:
            raise ValueError("length reward: set `alpha` (a constant) or `alpha_buckets` (alpha by pass rate), not "
                             "both: `alpha` takes precedence, so the table would never apply")
        buckets = DEFAULT_ALPHA_BUCKETS if alpha_buckets is None else alpha_buckets
        if not buckets or any(len(row) != 2 for row in buckets):
            raise ValueError(f"length reward: alpha_buckets must be [threshold, alpha] rows, got {buckets!r}")
        thresholds = [float(row[0]) for row in buckets]
        if thresholds != sorted(set(thresholds), reverse=True):
            raise ValueError("length reward: alpha_buckets thresholds must be distinct and in decreasing order, "
                             f"got {thresholds}")
        self.alpha = None if alpha is None else float(alpha)
        self.thresholds = thresholds
        self.bucket_alphas = [float(a) for _, a in buckets]
        self.correctness = correctness
        self.design = DESIGNS[design]

    def __call__(
        self,
        completions: list[str],
        completion_ids: list[list[int]],
        answer: list[Any],
        pass_rate: list[float | None] | None = None,
        length_alpha: list[float | None] | None = None,
        **kwargs: Any,
    ) -> RewardOutput:
        scored = [i for i, gold in enumerate(answer) if gold is not None]
        scores: list[float | None] = [None] * len(completions)
        if not scored:
            return RewardOutput(scores=scores)
        correct = [self._correct(completions[i], answer[i]) for i in scored]
        lengths = [len(completion_ids[i]) for i in scored]
        rates = pass_rate if pass_rate is not None else [None] * len(completions)
        stage_alpha = length_alpha if length_alpha is not None else [None] * len(completions)
        alphas = [self._alpha(stage_alpha[i], rates[i]) for i in scored]
        for i, alpha, r in zip(scored, alphas, self.design(lengths, correct)):
            scores[i] = alpha * r
        n = len(scored)
        metrics = {"alpha": sum(alphas) / n, "correct": sum(correct) / n, "length_mean": sum(lengths) / n}
        return RewardOutput(scores=scores, metrics=metrics)

    def _alpha(self, stage_alpha: float | None, pass_rate: float | None) -> float:
        """One response's alpha by the module docstring's precedence: the `alpha` arg, the
        curriculum's `length_alpha`, `alpha_buckets` on `pass_rate`, 1.0. An explicit arg wins so
        that what the recipe writes on the plugin applies in training and evaluation alike (the
        curriculum writes `length_alpha` on every training prompt, evaluation prompts have none)."""
        if self.alpha is not None:
            return self.alpha
        if stage_alpha is not None:
            return float(stage_alpha)
        return 1.0 if pass_rate is None else self.bucket_alpha(float(pass_rate))

    def bucket_alpha(self, pass_rate: float) -> float:
        """alpha of `pass_rate`'s `alpha_buckets` row.

        >>> [Length().bucket_alpha(r) for r in (0.9, 0.8, 0.6, 0.3, 0.1, 0.0)]
        [1.0, 0.5, 0.5, 0.2, 0.1, 0.1]
        """
        return self.bucket_alphas[bucket_index(pass_rate, self.thresholds)]

    def _correct(self, completion: str, gold: Any) -> bool:
        if self.correctness == "math":
            return verify_answer(completion, gold).correct
        predicted = extract_answer(completion)
        return predicted is not None and answers_match(predicted, gold)
