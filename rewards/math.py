r"""`math`: final-answer correctness checked with math-verify, plus a parse-failure flag.

The final answer is extracted like the other answer rewards (`rewards.answers.extract_answer`:
the last `\boxed{}`, else `<answer>...</answer>`, else "answer is ...", else the last number), then
compared with the `answer` column by math-verify, which knows LaTeX (`\frac`, `\sqrt`, `\%`,
`^\circ`, `\text{cm}`), intervals, sets and equations (`x = 5` matches `5`).

Time bound: a response is verified within `VERIFY_BUDGET_S` (all math-verify parses and
comparisons of one completion together; past it the answer counts as wrong, metric `timed_out`).
math-verify's own timeout takes whole seconds per parse and per comparison (up to 4 of each per
completion), so the budget is a `signal.setitimer` alarm of our own instead, which only works in a
process's main thread. Sync plugins run there in the reward worker (see `ling_rl.reward.worker`),
and so do direct calls from a script or a test; in any other thread there is no alarm and the
pool's per-plugin timeout is the only bound.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.answers import answers_match, extract_answer, strip_units

MAX_ANSWER_CHARS = 1000
"""Longer extracted answers count as parse failures: sympy on pages of garbage can take seconds."""

VERIFY_BUDGET_S = 0.5
"""math-verify's time for one completion (its parses and comparisons together; main thread only).
Nested `\\frac`s, towers of powers and `99999999!` otherwise took 4-5 s each."""

GOLD_BUDGET_S = 2.0
"""math-verify's time to parse one reference answer (main thread only)."""


class VerifyTimeout(BaseException):
    """Raised by our alarm inside math-verify/sympy. A BaseException, like math-verify's own, so
    their `except Exception` blocks do not swallow it."""


@dataclass(frozen=True)
class MathVerdict:
    """The verdict on one completion."""

    correct: bool
    parse_failed: bool
    """No final answer could be extracted, or math-verify could not parse it."""
    extracted: str | None
    """The extracted final answer (before parsing)."""
    timed_out: bool = False
    """math-verify ran past `VERIFY_BUDGET_S` (the answer then counts as wrong)."""


def verify_answer(completion: str, gold: Any, gold_parsed: list[Any] | None = None) -> MathVerdict:
    r"""Whether `completion`'s final answer equals `gold` mathematically.

    `gold_parsed`: `parse_gold(gold)` when the caller already has it (groups share one gold).

    >>> verify_answer(r"so \boxed{\frac{1}{2}}", "0.5")
    MathVerdict(correct=True, parse_failed=False, extracted='\\frac{1}{2}', timed_out=False)
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
    try:
        with _time_limit(VERIFY_BUDGET_S):
            for candidate in dict.fromkeys([extracted, strip_units(extracted)]):  # unique, in order
                parsed = _parse(candidate)
                if not parsed:
                    continue
                parse_failed = False
                if gold_parsed and verify(gold_parsed, parsed, timeout_seconds=None):
                    return MathVerdict(correct=True, parse_failed=False, extracted=extracted)
    except VerifyTimeout:
        return MathVerdict(correct=False, parse_failed=parse_failed, extracted=extracted, timed_out=True)
    return MathVerdict(correct=False, parse_failed=parse_failed, extracted=extracted)


def parse_gold(gold: Any) -> list[Any]:
    """math-verify's parse of a reference answer (empty when it cannot be parsed or takes longer
    than `GOLD_BUDGET_S`)."""
    try:
        with _time_limit(GOLD_BUDGET_S):
            return _parse(str(gold))
    except VerifyTimeout:
        return []


@reward("math")
def math_reward(prompts: list[str], completions: list[str], answer: list[Any], **kwargs: Any) -> RewardOutput:
    r"""1.0 if the final answer equals `answer` by math-verify, else 0.0; rows without `answer`: None.

    Metrics: `parse_failed`, the fraction of scored completions whose answer could not be extracted
    or parsed (a format problem rather than a wrong answer), `gold_parse_failed`, the fraction
    whose reference math-verify could not parse (then only plain equality can match), and
    `timed_out`, the fraction whose check ran past `VERIFY_BUDGET_S` (scored 0.0).

    >>> out = math_reward(prompts=["?"] * 3, completions=[r"\boxed{[1, 2)}", "x = 0.75", "hmm"], answer=["[1,2)", r"\frac34", "1"])
    >>> out.scores, out.metrics["parse_failed"]
    ([1.0, 1.0, 0.0], 0.333...)
    """
    scores: list[float | None] = []
    gold_cache: dict[str, list[Any]] = {}
    failed = gold_failed = timed_out = scored = 0
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
        timed_out += verdict.timed_out
    metrics = ({"parse_failed": failed / scored, "gold_parse_failed": gold_failed / scored, "timed_out": timed_out / scored}
               if scored else {})
    return RewardOutput(scores=scores, metrics=metrics)


def _parse(text: str) -> list[Any]:
    from math_verify import parse

    # An answer extracted from "$7$" keeps its dollars; wrap it once so math-verify reads LaTeX.
    body = text.strip().strip("$").strip()
    if not body:
        return []
    return list(parse(f"${body}$", parsing_timeout=None))  # bounded by `_time_limit` instead


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise `VerifyTimeout` in the block after `seconds` (main thread only; elsewhere no limit).

    The alarm repeats every `_REFIRE_S` after the first until the block is left: one raise can be
    swallowed where it lands (a bare `except:` in sympy, a `__del__` or a weakref callback, where
    Python only prints "Exception ignored"), and a one-shot alarm would then leave the block
    unbounded (seen: a nested-fraction answer ran for 20 minutes in a full test run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    armed, fired = [True], [0]

    def expired(signum: int, frame: Any) -> None:
        fired[0] += 1
        if fired[0] > _MAX_REFIRES:  # never a run-away timer, whatever swallowed the raises
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        if armed[0]:
            raise VerifyTimeout(f"math-verify ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds, _REFIRE_S)
    try:
        yield
    finally:
        # A repeat may land inside this cleanup: disarm, stop and restore again until it is done
        # (the exception that is leaving the block, if any, goes on after the finally).
        while True:
            try:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                break
            except VerifyTimeout:
                continue


_REFIRE_S = 0.05
"""Seconds between repeats of an expired alarm (see `_time_limit`)."""
_MAX_REFIRES = 200
"""Repeats at most (10 s past the budget); then the pool's per-plugin timeout is the bound."""
