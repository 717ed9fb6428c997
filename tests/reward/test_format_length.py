"""`format` and `length` rewards: the Evo-CoT rules, argument checks, and length through the pool."""

from __future__ import annotations

import doctest
from typing import Any

import pytest

import rewards.format
import rewards.length
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.loading import RewardResolutionError, resolve_rewards
from ling_rl.reward.pool import RewardPool, RewardWorkerError
from ling_rl.types import Rollout, Sample
from rewards.format import Format
from rewards.length import DESIGNS, Length, budget_length_scores, correct_length_scores, length_scores

# mode, require, completion, expected violations
FORMAT_CASES: list[tuple[str, str, str, list[str]]] = [
    ("instant", "none", "The answer is 4.", []),
    ("instant", "none", "<think>2+2=4</think> 4", ["thinking_tag"]),
    ("instant", "none", "4 </think>", ["thinking_tag"]),
    ("instant", "none", "<THINK>hmm", ["thinking_tag"]),
    ("instant", "answer_tag", "<answer>4</answer>", []),
    ("instant", "answer_tag", "4", ["missing_answer"]),
    ("instant", "answer_tag", "<answer>4</answer><answer>5</answer>", ["missing_answer"]),
    ("instant", "boxed", r"so \boxed{4}", []),
    ("instant", "boxed", r"so \boxed{4", ["missing_answer"]),
    ("instant", "boxed", r"<think>x</think>\boxed{4}", ["thinking_tag"]),
    ("think", "none", "<think>2+2</think><answer>4</answer>", []),
    ("think", "none", "  <think>\n2+2\n</think>\n<answer>4</answer>\n", []),
    ("think", "none", "<answer>4</answer>", ["malformed"]),
    ("think", "none", "<think>2+2</think>4", ["malformed"]),
    ("think", "none", "<answer>4</answer><think>2+2</think>", ["malformed"]),
    ("think", "none", "<think>a</think><answer>4</answer> trailing text", ["malformed"]),
    ("think", "none", "<think>a<think>b</think><answer>4</answer>", ["malformed"]),
    ("think", "none", "<think>a</think><answer>4</answer><answer>5</answer>", ["malformed"]),
    ("think", "boxed", r"<think>a</think><answer>\boxed{4}</answer>", []),
    ("think", "boxed", r"<think>\boxed{4}</think><answer>4</answer>", ["missing_answer"]),
]


@pytest.mark.parametrize(("mode", "require", "completion", "violations"), FORMAT_CASES)
def test_format_rules(mode: str, require: str, completion: str, violations: list[str]) -> None:
    plugin = Format(mode=mode, require=require, penalty=0.5)
    assert plugin.violations(completion) == violations
    assert plugin(completions=[completion]).scores == [-0.5 if violations else 0.0]


def test_format_metrics_and_penalty() -> None:
    out = Format(mode="instant", penalty=0.25)(completions=["4", "<think>x</think>4", "</think>", "5"])
    assert out.scores == [0.0, -0.25, -0.25, 0.0]
    assert out.metrics["thinking_tag"] == 0.5 and out.metrics["violations"] == 0.5


@pytest.mark.parametrize("args", [{"mode": "fast"}, {"require": "json"}, {"penalty": -1.0}])
def test_format_rejects_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Format(**args)


def test_length_formula() -> None:
    # Correct answers of 10, 20, 30 tokens and a wrong one of 10: p = 0.5, 0.0, -0.5, 0.5 -> min(0.5, 0).
    assert length_scores([10, 20, 30, 10], [True, True, True, False]) == [0.5, 0.0, -0.5, 0.0]
    assert length_scores([40, 10], [False, True]) == [-0.5, 0.5]
    # A group of one (or all of one length): l_max == l_min, p = 0.5.
    assert length_scores([7, 7], [True, False]) == [0.5, 0.0]


def test_length_designs_correct_and_budget() -> None:
    lengths, correct = [10, 20, 30, 5, 60], [True, True, True, False, False]
    # `correct`: ranked among the correct answers (10..30); wrong answers get 0 whatever their length.
    assert correct_length_scores(lengths, correct) == [0.5, 0.0, -0.5, 0.0, 0.0]
    # `budget`: r = 3/5, b = 10 + 0.4 * 20 = 18; beyond it, -0.5 * (l - 18) / (30 - 18).
    assert budget_length_scores(lengths, correct) == pytest.approx([0.0, -0.5 * 2 / 12, -0.5, 0.0, 0.0], abs=1e-6)
    # An all-wrong group: `group` charges the longer one, the others leave both at 0.
    assert {name: design([7, 9], [False, False]) for name, design in DESIGNS.items()} == {
        "group": [0.0, -0.5], "correct": [0.0, 0.0], "budget": [0.0, 0.0]}
    # No design makes a wrong answer's length matter except `group` (charged when long).
    for name in ("correct", "budget"):
        short, long = DESIGNS[name]([10, 20, 3], [True, True, False]), DESIGNS[name]([10, 20, 300], [True, True, False])
        assert short == long and short[2] == 0.0
    # No bonus under `budget`, and a correct answer always beats a wrong one once alpha <= 1.
    assert max(budget_length_scores([4, 8, 16, 32], [True] * 4)) == 0.0 and min(budget_length_scores([4, 8], [True] * 2)) >= -0.5


@pytest.mark.parametrize("design", ["correct", "budget"])
def test_length_plugin_takes_the_design_arg(design: str) -> None:
    call = {"completions": ["12", "so it is 12", "13 and more words"], "completion_ids": [[1] * 2, [1] * 6, [1] * 9],
            "answer": ["12"] * 3, "length_alpha": [1.0] * 3}
    out = Length(correctness="exact_answer", design=design)(**call)
    assert out.scores == DESIGNS[design]([2, 6, 9], [True, True, False])
    assert Length(correctness="exact_answer")(**call).scores == length_scores([2, 6, 9], [True, True, False])
    with pytest.raises(ValueError, match="design must be one of group, correct, budget, got 'short'"):
        Length(design="short")


def test_length_uses_the_verifier_and_token_lengths() -> None:
    completions = [r"\boxed{\frac{1}{2}}", "The answer is 0.5, since 1/2 = 0.5 exactly", "0.7"]
    ids = [[1] * 8, [1] * 24, [1] * 4]  # token lengths, not characters
    math_out = Length(correctness="math")(completions=completions, completion_ids=ids, answer=["1/2"] * 3)
    # lengths 8, 24, 4 -> p = 0.5 - (l - 4) / 20 = 0.3, -0.5, 0.5; the third is wrong -> min(0.5, 0) = 0.
    assert math_out.scores == pytest.approx([0.3, -0.5, 0.0])
    assert math_out.metrics["correct"] == pytest.approx(2 / 3) and math_out.metrics["length_mean"] == 12
    # Here exact matching agrees (numbers compare by value, \frac{1}{2} == 0.5 == 1/2).
    exact_out = Length(correctness="exact_answer")(completions=completions, completion_ids=ids, answer=["1/2"] * 3)
    assert exact_out.scores == pytest.approx(math_out.scores)
    # math-verify accepts an equivalent form exact matching cannot.
    forms = [r"\boxed{\sqrt{12}}", r"\boxed{2\sqrt{3}}"]
    assert Length(correctness="math")(completions=forms, completion_ids=[[1] * 2, [1] * 6], answer=[r"2\sqrt3"] * 2).scores == [0.5, -0.5]
    assert Length(correctness="exact_answer")(completions=forms, completion_ids=[[1] * 2, [1] * 6], answer=[r"2\sqrt3"] * 2).scores == [0.0, -0.5]


def test_length_alpha_from_pass_rate_buckets_or_arg() -> None:
    # The bucket rule itself is tested once, in tests/curriculum/test_buckets.py.
    assert [Length().bucket_alpha(r) for r in (1.0, 0.8, 0.51, 0.2)] == [1.0, 0.5, 0.5, 0.1]
    call = {"completions": ["12", "it is 12"], "completion_ids": [[1], [1, 1, 1]], "answer": ["12", "12"]}
    assert Length(alpha=0.3, correctness="exact_answer")(**call).scores == pytest.approx([0.15, -0.15])
    # An explicit `alpha` arg wins over the pass-rate table (issue 23 item 10: one precedence).
    with_rates = Length(alpha=0.3, correctness="exact_answer")(**call, pass_rate=[0.9, 0.9])
    assert with_rates.scores == pytest.approx([0.15, -0.15]) and with_rates.metrics["alpha"] == 0.3
    by_table = Length(correctness="exact_answer")(**call, pass_rate=[0.9, 0.9])
    assert by_table.scores == pytest.approx([0.5, -0.5]) and by_table.metrics["alpha"] == 1.0
    # A null pass rate (prompt never seen) and no arg: 1.0.
    assert Length(correctness="exact_answer")(**call, pass_rate=[None, 0.3]).metrics["alpha"] == pytest.approx((1.0 + 0.2) / 2)
    custom = Length(alpha_buckets=[[0.5, 2.0], [0.0, 0.0]], correctness="exact_answer")
    assert custom(**call, pass_rate=[0.6, 0.6]).scores == pytest.approx([1.0, -1.0])
    assert custom(**call, pass_rate=[0.4, 0.4]).scores == pytest.approx([0.0, 0.0])


def test_length_skips_rows_without_answer() -> None:
    out = Length(correctness="exact_answer")(completions=["1", "1"], completion_ids=[[1], [1, 1]], answer=[None, "1"])
    assert out.scores == [None, 0.5]


@pytest.mark.parametrize(
    "args", [{"correctness": "judge"}, {"alpha": 0.2, "alpha_buckets": [[0.0, 1.0]]}, {"alpha_buckets": [[0.2, 1.0], [0.8, 0.5]]}, {"alpha_buckets": [[0.5]]}, {"alpha_buckets": []},
             {"alpha_buckets": [[0.5, 1.0], [0.5, 2.0], [0.0, 0.1]]}]
)
def test_length_rejects_bad_args(args: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Length(**args)


def test_misspelled_args_fail_before_the_run() -> None:
    with pytest.raises(RewardResolutionError, match="alpha_bucket"):
        resolve_rewards([RewardSpec(name="length", args={"alpha_bucket": 1.0})])


@pytest.mark.parametrize("module", [rewards.format, rewards.length])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _rollout(group: int, text: str, n_tokens: int, answer: str, pass_rate: float | None) -> Rollout:
    sample = Sample(id=f"s{group}", prompt="?", prompt_ids=[1], columns={"answer": answer, "pass_rate": pass_rate})
    return Rollout(sample=sample, group=group, response_ids=[3] * n_tokens, response_text=text,
                   inf_logprobs=[0.0] * n_tokens, finish_reason="stop", policy_version=0)


def test_length_and_format_through_the_pool(ray_session: None) -> None:
    """Length is group-level: each prompt's min/max length is its own, alpha from its pass rate."""
    rollouts = [
        _rollout(0, "12", 2, "12", 0.9), _rollout(0, "so 12", 6, "12", 0.9),
        _rollout(1, "<think>x</think> 7", 20, "7", 0.3), _rollout(1, "7", 40, "7", 0.3),
    ]  # fmt: skip
    specs = [
        RewardSpec(name="length", args={"correctness": "exact_answer"}),
        RewardSpec(name="format", args={"mode": "instant"}),
    ]
    with RewardPool(specs, num_workers=1, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(rollouts)
    assert [s.breakdown["length"] for s in scored] == pytest.approx([0.5, -0.5, 0.1, -0.1])
    assert [s.breakdown["format"] for s in scored] == [0.0, 0.0, -0.5, 0.0]
    assert metrics.plugins["length"].failures == 0 and metrics.plugins["format"].failures == 0


def test_bad_args_stop_the_pool_at_start(ray_session: None) -> None:
    with pytest.raises(RewardWorkerError, match="mode must be one of"):
        RewardPool([RewardSpec(name="format", args={"mode": "fast"})], worker_cpus=0.25, start_timeout_s=60)
