"""Dynamic sampling: flat groups dropped, bounded refills, renumbering, fallback, every group seen."""

from __future__ import annotations

import pytest
from curriculum_helpers import group

from ling_rl.algorithms import AlgorithmConfig
from ling_rl.driver.batching import build_train_batch
from ling_rl.curriculum.config import CurriculumConfig
from ling_rl.curriculum.dynamic_sampling import collect_groups, is_flat, total_reward
from ling_rl.curriculum.evo_cot import Curriculum, split_groups
from ling_rl.types import ScoredRollout


def test_is_flat() -> None:
    assert is_flat(group("a", 0, [1.0, 1.0, 1.0]), total_reward)
    assert is_flat(group("a", 0, [0.0, 0.0]), total_reward)
    assert not is_flat(group("a", 0, [1.0, 0.0]), total_reward)
    assert is_flat(group("a", 0, [1.0, None, 1.0]), total_reward)  # skipped responses are not trained on
    assert is_flat(group("a", 0, [0.0, None]), total_reward)  # one trained response: nothing to compare
    g = group("a", 0, [1.0, 1.0])
    g[1].reward = 1.0 + 1e-12
    assert is_flat(g, total_reward)


def _plus_length_term(g: list[ScoredRollout], terms: list[float]) -> list[ScoredRollout]:
    """Total reward = correctness score + a length-like term, as with the `length` reward."""
    for s, term in zip(g, terms):
        s.reward += term
    return g


def _evo_cot_first() -> list[ScoredRollout]:
    return (_plus_length_term(group("right", 0, [1.0, 1.0]), [0.05, -0.05])
            + _plus_length_term(group("wrong", 1, [0.0, 0.0]), [0.0, -0.05])
            + _plus_length_term(group("mixed", 2, [1.0, 0.0]), [0.05, 0.0]))


@pytest.mark.parametrize(("filter_on", "kept_ids"), [("correctness", ["mixed"]), ("reward", ["right", "wrong", "mixed"]),
                                                      ("correct_reward", ["right", "mixed"])])
def test_filter_on_correctness_drops_all_correct_and_all_wrong_groups(filter_on: str, kept_ids: list[str]) -> None:
    # ALGORITHMS.md section 5: all-correct and all-wrong groups are filtered, whatever their length term.
    # correct_reward: the all-wrong group is flat whatever its length terms; the all-correct one stays.
    cur = Curriculum(CurriculumConfig(filter_on=filter_on), 512)
    kept, metrics, seen = collect_groups(_evo_cot_first(), Refills([], 3), target_groups=3, max_rounds=0,
                                         value=cur.filter_value)
    assert [g[0].rollout.sample.id for g in split_groups(kept)] == kept_ids
    assert metrics["dynamic/flat_groups_dropped"] == 3 - len(kept_ids) and len(seen) == 6


def test_correctness_is_the_curriculums_verdict_and_none_is_left_out() -> None:
    cur = Curriculum(CurriculumConfig(correct_threshold=0.5), 512)
    assert CurriculumConfig().filter_on == "correctness"
    assert not is_flat(group("a", 0, [0.6, 0.4]), cur.filter_value)  # correct_threshold decides "correct"
    assert is_flat(group("a", 0, [0.6, 0.9]), cur.filter_value)
    # A trained response whose correctness plugin returned None is not compared (as in pass rates).
    one_verdict_left = group("a", 0, [1.0, 0.0, 1.0])
    one_verdict_left[1].breakdown = {"exact_answer": None}
    assert not one_verdict_left[1].skipped and is_flat(one_verdict_left, cur.filter_value)
    two_verdicts = group("a", 0, [1.0, 0.0, 1.0])
    two_verdicts[2].breakdown = {"exact_answer": None}
    assert not is_flat(two_verdicts, cur.filter_value)


class Refills:
    """`more` for the tests: counts calls and returns the queued batches, numbering groups after `start`."""

    def __init__(self, batches: list[list[list[float]]], start: int) -> None:
        self.batches, self.next_group, self.asked = batches, start, []

    def __call__(self, n: int) -> list[ScoredRollout]:
        self.asked.append(n)
        out = []
        for scores in self.batches[len(self.asked) - 1][:n]:
            out += group(f"r{self.next_group}", self.next_group, scores)
            self.next_group += 1
        return out


def _first() -> list[ScoredRollout]:
    return (group("p0", 0, [1.0, 1.0]) + group("p1", 1, [1.0, 0.0]) + group("p2", 2, [0.0, 0.0])
            + group("p3", 3, [0.0, 1.0]))


def test_no_refill_when_enough_groups() -> None:
    more = Refills([], start=4)
    kept, metrics, seen = collect_groups(_first(), more, target_groups=2, max_rounds=2, value=total_reward)
    assert more.asked == [] and metrics["dynamic/refill_rounds"] == 0
    assert [(g[0].rollout.sample.id, g[0].rollout.group) for g in split_groups(kept)] == [("p1", 0), ("p3", 1)]
    assert len(seen) == 8 and metrics["dynamic/flat_groups_dropped"] == 2 and metrics["dynamic/fallback"] == 0


def test_refills_missing_groups_and_renumbers() -> None:
    more = Refills([[[1.0, 1.0], [0.5, 0.0]], [[0.0, 1.0]]], start=4)
    kept, metrics, seen = collect_groups(_first(), more, target_groups=4, max_rounds=3, value=total_reward)
    assert more.asked == [2, 1]  # 2 kept of 4; round 1 keeps 1 of 2; round 2 asks for the last one
    assert [(g[0].rollout.sample.id, g[0].rollout.group) for g in split_groups(kept)] == [
        ("p1", 0), ("p3", 1), ("r5", 2), ("r6", 3)]
    assert metrics == {"dynamic/flat_groups_dropped": 3, "dynamic/refill_rounds": 2, "dynamic/kept_groups": 4,
                       "dynamic/generated_groups": 7, "dynamic/fallback": 0}
    assert [s.rollout.group for s in seen] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]  # originals untouched


def test_refill_rounds_are_bounded() -> None:
    more = Refills([[[1.0, 1.0]] * 4] * 10, start=4)
    kept, metrics, seen = collect_groups(_first(), more, target_groups=4, max_rounds=2, value=total_reward)
    assert more.asked == [2, 2]  # every refill is flat: stops after 2 rounds
    assert len(split_groups(kept)) == 2 and metrics["dynamic/refill_rounds"] == 2
    assert metrics["dynamic/flat_groups_dropped"] == 6 and metrics["dynamic/generated_groups"] == 8
    assert len(split_groups(seen)) == 8


def test_zero_rounds_only_drops() -> None:
    more = Refills([], start=4)
    kept, metrics, _ = collect_groups(_first(), more, target_groups=4, max_rounds=0, value=total_reward)
    assert more.asked == [] and len(split_groups(kept)) == 2 and metrics["dynamic/kept_groups"] == 2


def test_returns_at_most_target_groups() -> None:
    first = group("p0", 0, [1.0, 1.0]) + group("p1", 1, [1.0, 0.0])

    def generous(n: int) -> list[ScoredRollout]:  # returns more groups than asked: cut to the target
        return group("x", 2, [1.0, 0.0]) + group("y", 3, [0.0, 1.0]) + group("z", 4, [0.0, 1.0])

    kept, metrics, seen = collect_groups(first, generous, target_groups=2, max_rounds=2, value=total_reward)
    assert [g[0].rollout.sample.id for g in split_groups(kept)] == ["p1", "x"]
    assert metrics["dynamic/kept_groups"] == 2 and metrics["dynamic/refill_rounds"] == 1
    assert len(split_groups(seen)) == 5


def test_fallback_returns_first_with_nothing_to_train() -> None:
    # All-correct and all-wrong groups whose totals differ by a length term: on fallback they must
    # not be trained on (their group-normalized length differences would be +-1 advantages).
    first = _evo_cot_first()[:4]
    cur = Curriculum(CurriculumConfig(), 512)
    more = Refills([[[1.0, 1.0]] * 2] * 5, start=2)
    kept, metrics, seen = collect_groups(first, more, target_groups=2, max_rounds=1, value=cur.filter_value)
    assert [s.rollout for s in kept] == [s.rollout for s in first] and [s.rollout.group for s in kept] == [0, 0, 1, 1]
    assert all(s.skipped for s in kept) and not any(s.skipped for s in first)  # copies; `seen` keeps the originals
    assert metrics["dynamic/fallback"] == 1 and metrics["dynamic/kept_groups"] == 0 and more.asked == [2]
    assert len(seen) == 8 and seen[:4] == first
    batch, batch_metrics = build_train_batch(kept, AlgorithmConfig(), None, pad_id=0)
    assert not batch.response_mask.any() and batch_metrics["batch/trained_responses"] == 0


def test_flat_groups_still_update_pass_rates() -> None:
    more = Refills([[[1.0, 1.0], [0.0, 1.0]]], start=4)
    kept, _, seen = collect_groups(_first(), more, target_groups=4, max_rounds=1, value=total_reward)
    cur = Curriculum(CurriculumConfig(), 512)
    cur.update(0, seen)
    assert cur.tracker.rate("p0") == 1.0 and cur.tracker.rate("p2") == 0.0 and cur.tracker.rate("r4") == 1.0
    assert len(cur.tracker) == 6


@pytest.mark.parametrize(("target", "rounds"), [(0, 1), (2, -1)])
def test_bad_bounds_are_refused(target: int, rounds: int) -> None:
    with pytest.raises(ValueError):
        collect_groups(_first(), Refills([], 4), target_groups=target, max_rounds=rounds, value=total_reward)
