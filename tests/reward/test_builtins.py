"""Built-in plugins: answer extraction, matching, shaping, doctests, and a run through the pool."""

from __future__ import annotations

import doctest
from typing import Any

import pytest

import rewards.answer_proximity
import rewards.answers
import rewards.exact_answer
from conftest import make_rollouts
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.pool import RewardPool
from ling_rl.reward.registry import REWARDS, load_builtins
from rewards.answer_proximity import answer_proximity
from rewards.answers import extract_answer, parse_number
from rewards.exact_answer import exact_answer

# completion, reference answer, extracted answer, exact_answer score
CASES = [
    ("The answer is 12.", "12", "12", 1.0),
    ("the answer is: 12, since 5 + 7 = 12", "12", "12", 1.0),
    (r"so \boxed{12.0}", "12", "12.0", 1.0),
    (r"\boxed{\frac{1}{2}} and then 7", "0.5", r"\frac{1}{2}", 1.0),
    (r"\boxed{x^{2}} was 3", "x^{2}", "x^{2}", 1.0),
    ("<answer> 1,234 </answer> 5", "1234", "1,234", 1.0),
    ("<ANSWER>-3</ANSWER>", "-3", "-3", 1.0),
    ("4 + 8 = 12", "12", "12", 1.0),
    ("We get 12,", "12", "12", 1.0),
    ("12, 13", "12", "13", 0.0),
    ("The answer is $7$.", "7", "$7$", 1.0),
    ("The answer is Paris.", "paris", "Paris", 1.0),
    ("answer is 3/4", "0.75", "3/4", 1.0),
    ("I think 11", "12", "11", 0.0),
    ("no numbers here", "12", None, 0.0),
    (r"\boxed{12", "12", "12", 1.0),  # unclosed box (ran out of tokens): falls back to the last number
    ("1.5e1 is it", "15", "1.5e1", 1.0),
]


@pytest.mark.parametrize(("completion", "reference", "extracted", "score"), CASES)
def test_extraction_and_exact_match(completion: str, reference: str, extracted: str | None, score: float) -> None:
    assert extract_answer(completion) == extracted
    assert exact_answer(prompts=["?"], completions=[completion], answer=[reference]) == [score]


def test_numbers_compare_by_value() -> None:
    values = {parse_number(t) for t in ["12", "12.0", "12,", "+12", "1.2e1", "$12$", r"\text{12}", "24/2"]}
    assert len(values) == 1 and values.pop() == 12
    assert parse_number("1,234.5") == parse_number("1234.5")
    assert parse_number("twelve") is None and parse_number("1/0") is None


def test_exact_answer_skips_rows_without_reference() -> None:
    assert exact_answer(prompts=["?", "?"], completions=["1", "1"], answer=[None, 1]) == [None, 1.0]


def test_answer_proximity_is_graded_and_bounded() -> None:
    completions = ["12", "11", "6", "-12", "nothing", r"\boxed{12} then 99"]
    scores = answer_proximity(prompts=["?"] * 6, completions=completions, answer=["12"] * 6)
    assert scores[0] == 1.0 and scores[5] == 1.0
    assert 1.0 > scores[1] > scores[2] > scores[3] > scores[4] == 0.0
    assert scores[1] == pytest.approx(1 / (1 + 1 / 12))
    # |answer| < 1 uses an absolute scale, so small answers do not make every miss ~0.
    assert answer_proximity(prompts=["?"], completions=["1"], answer=["0"]) == [0.5]
    assert answer_proximity(prompts=["?", "?"], completions=["1", "1"], answer=["Paris", None]) == [None, None]


@pytest.mark.parametrize("module", [rewards.answers, rewards.exact_answer, rewards.answer_proximity, rewards.numeric_response])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_builtins_are_registered() -> None:
    load_builtins()
    assert REWARDS.get("exact_answer") is exact_answer
    assert REWARDS.get("answer_proximity") is answer_proximity


def test_builtins_through_the_pool(ray_session: None) -> None:
    rollouts = make_rollouts([("Ann has 4 pens and buys 8.", "12", ["The answer is 12.", "so 9", "none"])])
    specs = [RewardSpec(name="exact_answer"), RewardSpec(name="answer_proximity", weight=0.5)]
    with RewardPool(specs, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(rollouts)
    assert [s.breakdown for s in scored] == [
        {"exact_answer": 1.0, "answer_proximity": 1.0},
        {"exact_answer": 0.0, "answer_proximity": 0.8},
        {"exact_answer": 0.0, "answer_proximity": 0.0},
    ]
    assert [s.reward for s in scored] == [1.5, 0.4, 0.0]
    assert metrics.plugins["exact_answer"].mean_score == pytest.approx(1 / 3)
