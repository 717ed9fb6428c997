"""Answer parsing that a policy cannot stall (issue 23 item 5): every response of up to 10 KB is
scored by `math`, `exact_answer`, `length` and `answer_proximity` within a bound, whatever it holds.

Before the fix, `parse_number("1e10000000")` built a ten-million-digit integer (7 s; `1e999999999`
never finished), `strip_units` backtracked exponentially on a run of letters (38 letters: 6.5 s),
and math-verify spent up to 5 s per parse and per comparison on nested `\\frac`s or power towers.
"""

from __future__ import annotations

import time

import pytest

from rewards.answer_proximity import answer_proximity
from rewards.answers import answers_match, parse_number, strip_units
from rewards.exact_answer import exact_answer
from rewards.length import Length
from rewards.math import math_reward, verify_answer

MAX_CHARS = 10_000
BOUND_S = 5.0
"""Generous for a shared 2-core machine; measured max on it: see docs/rewards.md."""

HOSTILE = {
    "huge exponent, boxed": r"\boxed{1e999999999}",
    "huge exponent, stated": "so the answer is 1e10000000",
    "letter run after a number": "the answer is 5 " + "ab" * 20 + "1",
    "letter run, boxed": r"\boxed{7 " + "x" * 40 + "!}",
    "nested fractions": r"\boxed{" + r"\frac{1}{" * 60 + "2" + "}" * 60 + "}",
    "nested braces": r"\boxed{" + "{" * 400 + "1" + "}" * 400 + "}",
    "power tower": r"\boxed{9^{9^{9^{9^{9}}}}}",
    "huge factorial": r"\boxed{99999999!}",
    "long digit string": "1" * MAX_CHARS,
    "long boxed digits": r"\boxed{" + "9" * 990 + "}",
}


def test_parse_number_refuses_huge_exponents_and_lengths() -> None:
    assert parse_number("1e10000000") is None
    assert parse_number("-2.5E-99999") is None
    assert parse_number("1.5e3") == 1500
    assert parse_number("1e1000") == 10**1000  # the largest exponent still read
    assert parse_number("7" * 2000) is None
    # Equal text still matches as text, so a long exact answer is not lost.
    assert answers_match("1e10000000", "1e10000000") and not answers_match("1e10000000", "1e10000001")


def test_strip_units_is_linear_on_letter_runs() -> None:
    start = time.monotonic()
    assert strip_units("5 " + "a" * 40 + "1") == "5 " + "a" * 40 + "1"
    assert time.monotonic() - start < BOUND_S
    # Unit words are still stripped.
    assert strip_units("3.5 km per hour") == "3.5" and strip_units("12 dollars.") == "12" and strip_units("2 x") == "2 x"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_response_scores_within_the_bound(name: str) -> None:
    text = HOSTILE[name][:MAX_CHARS]
    verify_answer(r"\boxed{1}", "1")  # math-verify and sympy imported outside the timing
    for label, score in [
        ("math", lambda: math_reward(prompts=["?"], completions=[text], answer=["12"]).scores),
        ("exact_answer", lambda: exact_answer(prompts=["?"], completions=[text], answer=["12"])),
        ("answer_proximity", lambda: answer_proximity(prompts=["?"], completions=[text], answer=["12"])),
        ("length", lambda: Length(correctness="math")(completions=[text, "12"], completion_ids=[[1] * 9, [1] * 2],
                                                       answer=["12"] * 2).scores[:1]),
    ]:
        start = time.monotonic()
        scores = score()
        elapsed = time.monotonic() - start
        assert elapsed < BOUND_S, f"{label} took {elapsed:.1f} s on {name!r}"
        assert isinstance(scores[0], float) and scores[0] < 1.0, (label, scores)  # scored, and not as correct


def test_a_timed_out_check_is_counted_and_scored_wrong() -> None:
    from rewards.math import VERIFY_BUDGET_S

    out = math_reward(prompts=["?"], completions=[HOSTILE["power tower"]], answer=["12"])
    assert out.scores == [0.0] and out.metrics["timed_out"] == 1.0
    assert VERIFY_BUDGET_S < 1.0
    # A normal answer is unaffected.
    assert math_reward(prompts=["?"], completions=[r"\boxed{\frac{24}{2}}"], answer=["12"]).scores == [1.0]
