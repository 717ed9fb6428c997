"""`answer_proximity`: a shaped numeric reward with signal even for a random policy."""

from __future__ import annotations

from typing import Any

from ling_rl.reward.registry import reward
from rewards.answers import extract_answer, last_number, parse_number


@reward("answer_proximity")
def answer_proximity(
    prompts: list[str], completions: list[str], answer: list[Any], **kwargs: Any
) -> list[float | None]:
    """`1 / (1 + |pred - answer| / max(1, |answer|))`, in (0, 1], 1.0 only for the exact value.

    `pred` is the completion's final answer (`\\boxed{}`, `<answer>`, "answer is", else the last
    number), falling back to its last number when that answer is not numeric; a completion with
    no number scores 0.0. Rows whose `answer` is missing or not numeric are skipped (None).
    Unlike exact match, a policy that merely emits numbers near the answer is rewarded more than
    one that emits far ones, which gives a gradient from the very first (random) steps.

    >>> answer_proximity(prompts=["?"] * 4, completions=["12", "so 9", "15 or 6", "none"], answer=[12, 12, 12, 12])
    [1.0, 0.8, 0.666..., 0.0]
    >>> answer_proximity(prompts=["?"], completions=["5"], answer=["n/a"])
    [None]
    """
    scores: list[float | None] = []
    for completion, reference in zip(completions, answer):
        target = parse_number(str(reference)) if reference is not None else None
        if target is None:
            scores.append(None)
            continue
        extracted = extract_answer(completion)
        pred = parse_number(extracted) if extracted is not None else None
        if pred is None:
            fallback = last_number(completion)
            pred = parse_number(fallback) if fallback is not None else None
        if pred is None:
            scores.append(0.0)
            continue
        scores.append(float(1 / (1 + abs(pred - target) / max(1, abs(target)))))
    return scores
