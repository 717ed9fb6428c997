"""`numeric_response`: a format reward for answer-with-a-number tasks that a random policy can climb."""

from __future__ import annotations

from typing import Any

from ling_rl.reward.registry import reward


@reward("numeric_response")
def numeric_response(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Fraction of the completion's non-space characters that are digits, in [0, 1].

    It rewards the *form* of an arithmetic answer (numbers, not prose) without looking at the
    prompt, so even a randomly initialised policy gets a dense signal it can climb within tens of
    steps: the smoke-test reward of `recipes/tiny_cpu.yaml`, usually paired with `exact_answer`.
    An empty completion scores 0.0.

    >>> numeric_response(prompts=["?"] * 3, completions=["42", "is 42", "   "])
    [1.0, 0.5, 0.0]
    """
    scores = []
    for text in completions:
        chars = [c for c in text if not c.isspace()]
        scores.append(sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0)
    return scores
