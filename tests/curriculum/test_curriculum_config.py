"""Curriculum recipe sections: default alpha table, edge validation, stage name uniqueness."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from ling_rl.config import RecipeError, parse_recipe
from ling_rl.curriculum.config import CurriculumConfig, StageConfig


def test_default_alpha_table_is_algorithms_md() -> None:
    assert StageConfig(name="s").alpha == {"0.8": 1.0, "0.5": 0.5, "0.2": 0.2, "0.0": 0.1}


def test_numeric_yaml_keys_are_normalized() -> None:
    assert StageConfig(name="s", alpha={0.9: 2.0, 0: 0.0}).alpha == {"0.9": 2.0, "0.0": 0.0}


@pytest.mark.parametrize(("alpha", "needle"), [
    ({"0.5": 1.0}, "needs a '0.0' edge"),
    ({"easy": 1.0, "0.0": 0.1}, "edge 'easy' is not a number"),
    ({"1.0": 1.0, "0.0": 0.1}, "outside [0, 1)"),
    ({"-0.1": 1.0, "0.0": 0.1}, "outside [0, 1)"),
    ({"0.5": -1.0, "0.0": 0.1}, "must be a finite number >= 0"),
    ({"0": 1.0, "0.0": 0.1}, "given twice"),
])
def test_bad_alpha_tables_are_refused(alpha: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        StageConfig(name="s", alpha=alpha)


def test_data_mix_needs_a_positive_weight() -> None:
    with pytest.raises(ValidationError, match="at least one dataset"):
        StageConfig(name="s", data_mix={"a.jsonl": 0.0})
    with pytest.raises(ValidationError, match=">= 0"):
        StageConfig(name="s", data_mix={"a.jsonl": -1.0, "b.jsonl": 2.0})


def test_stage_names_are_unique_and_unknown_keys_refused() -> None:
    with pytest.raises(ValidationError, match="repeated: a"):
        CurriculumConfig(stages=[StageConfig(name="a"), StageConfig(name="a")])
    with pytest.raises(ValidationError, match="extra"):
        CurriculumConfig.model_validate({"stagez": []})
    with pytest.raises(ValidationError):
        CurriculumConfig(pass_rate_ema=0.0)


def test_curriculum_modules_import_without_torch() -> None:
    code = ("import sys, ling_rl.curriculum.evo_cot, ling_rl.curriculum.dynamic_sampling; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize(("curriculum", "ok"), [
    ({"dynamic_sampling": True}, False),  # filter_on: correctness by default
    ({"dynamic_sampling": True, "filter_on": "reward"}, True),
    ({"dynamic_sampling": False}, True),
])
def test_filtering_on_correctness_needs_the_correctness_reward(curriculum: dict, ok: bool) -> None:
    data = {"model": {"tiny": "tiny"}, "data": {"train": "data/arith/train.jsonl"},
            "rewards": [{"name": "numeric_response"}], "curriculum": curriculum}
    if ok:
        parse_recipe(data)
        return
    with pytest.raises(RecipeError, match="curriculum.correctness: is 'exact_answer', which is not one of the rewards "
                                          r"\(numeric_response\).*dynamic sampling"):
        parse_recipe(data)
