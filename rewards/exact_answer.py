"""`exact_answer`: 1.0 when the completion's final answer equals the `answer` column."""

from __future__ import annotations

from typing import Any

from ling_rl.reward.registry import reward
from rewards.answers import answers_match, extract_answer


@reward("exact_answer")
def exact_answer(prompts: list[str], completions: list[str], answer: list[Any], **kwargs: Any) -> list[float | None]:
    r"""1.0 if the final answer (see `rewards.answers.extract_answer`) matches `answer`, else 0.0.

    Numbers compare by value ("12" == "12.0" == "12," == "1.2e1"; "1,234" == "1234"), other answers
    as trimmed, case-folded text. A row whose `answer` is None is skipped (None).

    >>> exact_answer(
    ...     prompts=["Ann has 4 pens and buys 8. How many?"] * 4,
    ...     completions=["4 + 8 = 12. The answer is 12.", r"\boxed{12.0}", "<answer>13</answer>", "no idea"],
    ...     answer=["12", "12", "12", "12"],
    ... )
    [1.0, 1.0, 0.0, 0.0]
    >>> exact_answer(prompts=["?"], completions=["7"], answer=[None])
    [None]
    """
    scores: list[float | None] = []
    for completion, reference in zip(completions, answer):
        if reference is None:
            scores.append(None)
            continue
        predicted = extract_answer(completion)
        scores.append(1.0 if predicted is not None and answers_match(predicted, reference) else 0.0)
    return scores
