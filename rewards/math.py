r"""`math`: final-answer correctness checked with math-verify, plus a parse-failure flag.

The final answer is extracted like the other answer rewards (`rewards.answers.extract_answer`:
the last `\boxed{}`, else `<answer>...</answer>`, else "answer is ...", else the last number), then
compared with the `answer` column by math-verify, which knows LaTeX (`\frac`, `\sqrt`, `\%`,
`^\circ`, `\text{cm}`), intervals, sets and equations (`x = 5` matches `5`).

math-verify guards its sympy calls with `signal.alarm`, which only works in a process's main
thread. Sync plugins run there in the reward worker (see `ling_rl.reward.worker`), and so do direct
calls from a script or a test; in any other thread the alarm is switched off and the pool's
per-plugin timeout is the only bound.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.answers import answers_match, extract_answer, strip_units

MAX_ANSWER_CHARS = 1000
"""Longer extracted answers count as parse failures: sympy on pages of garbage can take seconds."""

PARSE_TIMEOUT_S = 5
"""math-verify's own limit per parse and per comparison (main thread only)."""


@dataclass(frozen=True)
class MathVerdict:
    """The verdict on one completion."""

    correct: bool
    parse_failed: bool
    """No final answer could be extracted, or math-verify could not parse it."""
    extracted: str | None
    """The extracted final answer (before parsing)."""


def verify_answer(completion: str, gold: Any, gold_parsed: list[Any] | None = None) -> MathVerdict:
    r"""Whether `completion`'s final answer equals `gold` mathematically.

    `gold_parsed`: `parse_gold(gold)` when the caller already has it (groups share one gold).

    >>> verify_answer(r"so \boxed{\frac{1}{2}}", "0.5")
    MathVerdict(correct=True, parse_failed=False, extracted='\\frac{1}{2}')
    >>> verify_answer("The answer is 5 apples.", "5").correct, verify_answer("no idea", "5").parse_failed
    (True, True)
    """
    extracted = extract_answer(completion)
    if extracted is None or len(extracted) > MAX_ANSWER_CHARS:
        return MathVerdict(correct=False, parse_failed=True, extracted=extracted)
    # Plain equality needs no sympy and settles most arithmetic answers ("12" == "12.0").
    if answers_match(extracted, gold):
        return MathVerdict(correct=True, parse_failed=False, extracted=extracted)
    from math_verify import verify  # heavy (sympy): imported on first use, not with the package

    gold_parsed = parse_gold(gold) if gold_parsed is None else gold_parsed
    parse_failed = True
    for candidate in dict.fromkeys([extracted, strip_units(extracted)]):  # unique, in order
        parsed = _parse(candidate)
        if not parsed:
            continue
        parse_failed = False
        if gold_parsed and verify(gold_parsed, parsed, timeout_seconds=_timeout()):
            return MathVerdict(correct=True, parse_failed=False, extracted=extracted)
    return MathVerdict(correct=False, parse_failed=parse_failed, extracted=extracted)


def parse_gold(gold: Any) -> list[Any]:
    """math-verify's parse of a reference answer (empty when it cannot be parsed)."""
    return _parse(str(gold))


@reward("math")
def math_reward(prompts: list[str], completions: list[str], answer: list[Any], **kwargs: Any) -> RewardOutput:
    r"""1.0 if the final answer equals `answer` by math-verify, else 0.0; rows without `answer`: None.

    Metrics: `parse_failed`, the fraction of scored completions whose answer could not be extracted
    or parsed (a format problem rather than a wrong answer), and `gold_parse_failed`, the fraction
    whose reference math-verify could not parse (then only plain equality can match).

    >>> out = math_reward(prompts=["?"] * 3, completions=[r"\boxed{[1, 2)}", "x = 0.75", "hmm"], answer=["[1,2)", r"\frac34", "1"])
    >>> out.scores, out.metrics["parse_failed"]
    ([1.0, 1.0, 0.0], 0.333...)
    """
    scores: list[float | None] = []
    gold_cache: dict[str, list[Any]] = {}
    failed = gold_failed = scored = 0
    for completion, gold in zip(completions, answer):
        if gold is None:
            scores.append(None)
            continue
        key = str(gold)
        if key not in gold_cache:
            gold_cache[key] = parse_gold(key)
        verdict = verify_answer(completion, gold, gold_cache[key])
        scores.append(1.0 if verdict.correct else 0.0)
        scored += 1
        failed += verdict.parse_failed
        gold_failed += not gold_cache[key]
    metrics = {"parse_failed": failed / scored, "gold_parse_failed": gold_failed / scored} if scored else {}
    return RewardOutput(scores=scores, metrics=metrics)


def _parse(text: str) -> list[Any]:
    from math_verify import parse

    # An answer extracted from "$7$" keeps its dollars; wrap it once so math-verify reads LaTeX.
    body = text.strip().strip("$").strip()
    if not body:
        return []
    return list(parse(f"${body}$", parsing_timeout=_timeout()))


def _timeout() -> int | None:
    """math-verify's timeout: its `signal.alarm` raises outside the main thread, so None there."""
    return PARSE_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
