"""Evo-CoT curriculum: buckets, alpha per stage, pass-rate EMA, stage advance, data mix, state round trip."""

from __future__ import annotations

import json
import random

import pytest
from curriculum_helpers import group, sample

from ling_rl.curriculum.config import CurriculumConfig, StageConfig
from ling_rl.curriculum.evo_cot import Curriculum, PassRateTracker, alpha_for, bucket_edge

DEFAULT = StageConfig(name="s").alpha


def test_alpha_per_stage() -> None:
    # The bucket rule itself is tested once, in test_buckets.py; here the table keys and alphas.
    assert [bucket_edge(r, DEFAULT) for r in (0.81, 0.8, 0.0)] == ["0.8", "0.5", "0.0"]
    easy_first = StageConfig(name="a")
    custom = StageConfig(name="b", alpha={"0.9": 2.0, "0.0": 0.0})
    assert [alpha_for(r, easy_first) for r in (0.9, 0.6, 0.3, 0.1)] == [1.0, 0.5, 0.2, 0.1]
    assert [alpha_for(r, custom) for r in (0.95, 0.9, 0.3)] == [2.0, 0.0, 0.0]


def test_pass_rate_ema() -> None:
    t = PassRateTracker(ema=0.5, initial=0.3)
    assert t.rate("x") == 0.3
    assert t.update("x", 1.0) == 1.0  # the first observed group sets the rate
    assert t.update("x", 0.0) == 0.5
    assert t.update("x", 0.5) == 0.5
    assert t.update("x", 1.0) == pytest.approx(0.75)
    assert t.rate("y") == 0.3 and len(t) == 1


def test_annotate_sets_columns_from_pass_rate_and_stage() -> None:
    cur = Curriculum(CurriculumConfig(stages=[StageConfig(name="a", alpha={"0.5": 3.0, "0.0": 0.5})]), 512)
    cur.update(0, group("easy", 0, [1.0, 1.0, 1.0, 1.0]) + group("hard", 1, [0.0, 0.0, 0.0, 1.0]))
    samples = cur.annotate([sample("easy"), sample("hard"), sample("new")])
    cols = [{k: s.columns[k] for k in ("pass_rate", "length_alpha", "difficulty_bucket")} for s in samples]
    assert cols == [
        {"pass_rate": 1.0, "length_alpha": 3.0, "difficulty_bucket": "0.5"},
        {"pass_rate": 0.25, "length_alpha": 0.5, "difficulty_bucket": "0.0"},
        {"pass_rate": 0.5, "length_alpha": 0.5, "difficulty_bucket": "0.0"},  # unseen: initial_pass_rate 0.5
    ]
    assert samples[0].columns["answer"] == "4"


def test_annotate_copies_so_a_group_in_flight_keeps_its_draws_alpha() -> None:
    # A data source hands out the same Sample objects every epoch; with async generation a group
    # drawn earlier is scored after a later draw of the same prompt was annotated.
    cur = Curriculum(CurriculumConfig(stages=[StageConfig(name="a", alpha={"0.5": 3.0, "0.0": 0.5})]), 512)
    shared = sample("p")
    first = cur.annotate([shared, shared])
    cur.update(0, group("p", 0, [1.0, 1.0]))  # the prompt is solved now: bucket 0.5, alpha 3.0
    second = cur.annotate([shared])
    assert [s.columns["length_alpha"] for s in first] == [0.5, 0.5] and second[0].columns["length_alpha"] == 3.0
    assert shared.columns == {"answer": "4"} and first[0] is not shared and first[0].columns is not first[1].columns
    assert (first[0].id, first[0].prompt_ids, first[0].columns["answer"]) == ("p", [1, 2], "4")


def test_update_counts_correctness_and_skips_none() -> None:
    cur = Curriculum(CurriculumConfig(correct_threshold=0.5), 512)
    m = cur.update(0, group("a", 0, [1.0, 0.6, 0.4, None]) + group("b", 1, [None, None]))
    assert m["curriculum/accuracy"] == pytest.approx(2 / 3)
    assert m["curriculum/counted_responses"] == 3
    assert cur.tracker.rate("a") == pytest.approx(2 / 3)
    assert cur.tracker.rate("b") == 0.5 and len(cur.tracker) == 1  # nothing counted: no observation
    # a: 2/3 -> bucket 0.5; b keeps the initial 0.5, which is not above the 0.5 edge -> bucket 0.2
    assert [m[f"curriculum/bucket_{e}"] for e in ("0.8", "0.5", "0.2", "0.0")] == [0, 1, 1, 0]
    assert "curriculum/accuracy" not in cur.update(1, group("b", 0, [None, None]))


def test_same_prompt_in_two_groups_is_two_observations() -> None:
    cur = Curriculum(CurriculumConfig(pass_rate_ema=1.0), 512)
    cur.update(0, group("a", 0, [1.0, 1.0]) + group("a", 1, [0.0, 0.0]))
    assert cur.tracker.rate("a") == 0.0  # ema 1.0 keeps the later group


def _stages(**first: object) -> CurriculumConfig:
    return CurriculumConfig(accuracy_window=3, stages=[
        StageConfig(name="short", max_response_tokens=128, **first),
        StageConfig(name="long", data_mix={"hard.jsonl": 1.0}),
    ])


def test_advance_by_accuracy_waits_for_a_full_window() -> None:
    cur = Curriculum(_stages(advance_accuracy=0.75), 512)
    assert cur.max_response_tokens() == 128
    good = group("a", 0, [1.0, 1.0, 1.0, 1.0])
    assert cur.update(0, good)["curriculum/advanced"] == 0  # accuracy 1.0, but the window has 1 of 3 steps
    assert cur.update(1, good)["curriculum/advanced"] == 0
    m = cur.update(2, good)
    assert m["curriculum/advanced"] == 1 and m["curriculum/stage"] == 0 and m["curriculum/rolling_accuracy"] == 1.0
    assert cur.stage_index == 1 and cur.stage.name == "long" and cur.max_response_tokens() == 512
    assert cur.steps_in_stage == 0 and cur.window == []


def test_rolling_accuracy_below_threshold_does_not_advance() -> None:
    cur = Curriculum(_stages(advance_accuracy=0.75), 512)
    for step, scores in enumerate([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]):
        m = cur.update(step, group("a", 0, scores))
        assert m["curriculum/advanced"] == 0, step
    # window = last 3 steps: 0/2, 2/2, 2/2 -> 4/6 < 0.75
    assert m["curriculum/rolling_accuracy"] == pytest.approx(4 / 6)
    assert cur.update(5, group("a", 0, [1.0, 1.0]))["curriculum/advanced"] == 1  # 6/6


def test_advance_by_step_budget_and_last_stage_never_advances() -> None:
    cur = Curriculum(CurriculumConfig(stages=[StageConfig(name="a", max_steps=2), StageConfig(name="b", max_steps=1,
                                                                                              advance_accuracy=0.0)]), 512)
    bad = group("a", 0, [0.0, 0.0])
    assert [cur.update(s, bad)["curriculum/advanced"] for s in range(2)] == [0, 1]
    assert cur.stage.name == "b"
    assert [cur.update(s, bad)["curriculum/advanced"] for s in range(2, 12)] == [0] * 10
    assert cur.stage_index == 1 and cur.steps_in_stage == 10


def test_implicit_stage_uses_rollout_settings_and_train_source() -> None:
    cur = Curriculum(CurriculumConfig(), 384, train_source="data/arith/train.jsonl")
    assert cur.stage.name == "default" and cur.max_response_tokens() == 384 and cur.stage.alpha == DEFAULT
    assert cur.choose_sources(3, random.Random(0)) == ["data/arith/train.jsonl"] * 3
    for step in range(20):
        assert cur.update(step, group("a", 0, [1.0, 1.0]))["curriculum/advanced"] == 0


def test_data_mix_is_weighted_and_seeded() -> None:
    cur = Curriculum(CurriculumConfig(stages=[StageConfig(name="m", data_mix={"a": 3.0, "b": 1.0, "c": 0.0})]), 512)
    assert cur.weights_for_mix() == {"a": 3.0, "b": 1.0}
    picks = cur.choose_sources(4000, random.Random(7))
    assert picks == cur.choose_sources(4000, random.Random(7))
    assert set(picks) == {"a", "b"} and 0.7 < picks.count("a") / len(picks) < 0.8


def test_repeated_step_is_refused() -> None:
    cur = Curriculum(CurriculumConfig(), 512)
    cur.update(3, group("a", 0, [1.0, 0.0]))
    with pytest.raises(ValueError, match="step 3 was already recorded"):
        cur.update(3, group("a", 0, [1.0, 0.0]))


def test_state_round_trip_through_json() -> None:
    cfg = _stages(advance_accuracy=0.75)
    steps = [group("a", 0, [1.0, 1.0]) + group("b", 1, [0.0, 1.0]), group("a", 0, [1.0, 1.0]) + group("b", 1, [1.0, 1.0])]
    cur = Curriculum(cfg, 512)
    for step, scored in enumerate(steps):
        cur.update(step, scored)
    restored = Curriculum(cfg, 512)
    restored.load_state_dict(json.loads(json.dumps(cur.state_dict())))
    assert restored.state_dict() == cur.state_dict()
    nxt = group("a", 0, [1.0, 1.0]) + group("c", 1, [1.0, 0.0])
    m1, m2 = cur.update(2, nxt), restored.update(2, nxt)
    assert m1 == m2 and m1["curriculum/advanced"] == 1  # 7/8 >= 0.75 over the restored window
    assert restored.state_dict() == cur.state_dict() and restored.stage.name == "long"
    fresh = Curriculum(cfg, 512)
    assert fresh.update(2, nxt)["curriculum/advanced"] == 0  # without the restored window it would not advance


def test_load_refuses_a_stage_the_recipe_does_not_have() -> None:
    cur = Curriculum(_stages(max_steps=1), 512)
    cur.update(0, group("a", 0, [1.0]))
    state = json.loads(json.dumps(cur.state_dict()))
    with pytest.raises(ValueError, match="stage 1 'long'"):
        Curriculum(CurriculumConfig(stages=[StageConfig(name="short")]), 512).load_state_dict(state)
