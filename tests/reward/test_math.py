"""`math` reward: a table of answer pairs with expected verdicts, metrics, threads, and the pool."""

from __future__ import annotations

import doctest
import threading

import pytest

import rewards.math
from conftest import make_rollouts
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.pool import RewardPool
from rewards.math import math_reward, verify_answer

# completion, gold answer, correct, parse_failed
TABLE: list[tuple[str, str, bool, bool]] = [
    # equal forms
    ("The answer is 12.", "12", True, False),
    (r"\boxed{12.0}", "12", True, False),
    (r"so \boxed{\frac{1}{2}}", "0.5", True, False),
    (r"\boxed{\dfrac{3}{4}}", "0.75", True, False),
    (r"\boxed{\frac34}", "3/4", True, False),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True, False),
    ("answer is 1,000", "1000", True, False),
    (r"\boxed{50\%}", "0.5", True, False),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}", True, False),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\sqrt{2}/2", True, False),
    (r"\boxed{[1, 2)}", "[1,2)", True, False),
    ("The answer is (1, 2], since the left end is open.", "(1,2]", True, False),
    (r"\boxed{(-\infty, 3)}", r"(-\infty,3)", True, False),
    (r"\boxed{\{1, 2\}}", r"\{2,1\}", True, False),
    (r"\boxed{x = 5}", "5", True, False),
    (r"\boxed{x^2 + 1}", "1 + x^2", True, False),
    (r"\boxed{a+b}", "b+a", True, False),
    (r"\boxed{5\text{ cm}}", "5", True, False),
    (r"\boxed{3\,\mathrm{m}}", "3", True, False),
    (r"\boxed{90^\circ}", "90", True, False),
    ("The answer is 5 apples.", "5", True, False),
    ("The answer is 12 dollars", "12", True, False),
    (r"\boxed{\$12}", "12", True, False),
    ("The answer is $7$.", "7", True, False),
    ("<answer>1.5e1</answer>", "15", True, False),
    ("4 + 8 = 12", "12", True, False),
    (r"\boxed{\infty}", r"\infty", True, False),
    (r"\boxed{0.3333333}", r"\frac{1}{3}", True, False),
    (r"\boxed{\pi}", r"\pi", True, False),
    ("<answer>Paris</answer>", "paris", True, False),
    # unequal forms
    ("The answer is 13.", "12", False, False),
    (r"\boxed{\frac{1}{3}}", "0.5", False, False),
    (r"\boxed{(1, 2]}", "[1,2]", False, False),
    (r"\boxed{[1, 2)}", "[1,2]", False, False),
    (r"\boxed{x^2 - 1}", "x^2 + 1", False, False),
    (r"\boxed{0.333}", r"\frac{1}{3}", False, False),
    (r"\boxed{\pi}", "3.14159", False, False),
    (r"\boxed{-5}", "5", False, False),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}", False, False),
    (r"\boxed{\{1, 3\}}", r"\{1,2\}", False, False),
    ("12, 13", "12", False, False),  # the last number is the answer
    (r"\boxed{2/3}", r"\frac{3}{2}", False, False),
    # no extractable or parsable answer: wrong, and flagged
    ("I do not know.", "12", False, True),
    ("", "5", False, True),
    (r"\boxed{}", "5", False, True),
]


@pytest.mark.parametrize(("completion", "gold", "correct", "parse_failed"), TABLE)
def test_answer_pairs(completion: str, gold: str, correct: bool, parse_failed: bool) -> None:
    verdict = verify_answer(completion, gold)
    assert (verdict.correct, verdict.parse_failed) == (correct, parse_failed)


def test_table_is_large_and_balanced() -> None:
    assert len(TABLE) >= 40
    assert sum(c for _, _, c, _ in TABLE) >= 15 and sum(not c for _, _, c, _ in TABLE) >= 15


def test_scores_and_parse_failure_metric() -> None:
    out = math_reward(
        prompts=["?"] * 5,
        completions=[r"\boxed{\frac12}", "0.4", "no answer here", "7", "7"],
        answer=["0.5", "1/2", "3", None, r"\text{seven}"],
    )
    assert out.scores == [1.0, 0.0, 0.0, None, 0.0]
    # 4 scored rows, one without an answer; the skipped row does not count.
    assert out.metrics["parse_failed"] == pytest.approx(1 / 4)


def test_works_outside_the_main_thread() -> None:
    """math-verify's signal.alarm raises in threads; the plugin switches it off there."""
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(math_reward(prompts=["?"], completions=[r"\boxed{\frac{2}{4}}"], answer=["0.5"])))
    thread.start()
    thread.join()
    assert results and results[0].scores == [1.0]  # type: ignore[attr-defined]


def test_docstring_examples() -> None:
    result = doctest.testmod(rewards.math, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_math_through_the_pool(ray_session: None) -> None:
    """Sync plugins run in the worker's main thread, where math-verify's alarm works."""
    rollouts = make_rollouts([("Half of 1?", r"\frac{1}{2}", [r"\boxed{0.5}", "The answer is 2.", "hmm"])])
    with RewardPool([RewardSpec(name="math")], worker_cpus=0.25) as pool:
        scored, metrics = pool.score(rollouts)
    assert [s.breakdown["math"] for s in scored] == [1.0, 0.0, 0.0]
    plugin = metrics.plugins["math"]
    assert plugin.failures == 0 and plugin.extra["parse_failed"] == pytest.approx(1 / 3)
