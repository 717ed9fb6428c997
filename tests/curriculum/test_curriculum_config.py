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


def test_correctness_may_be_an_environments_own_reward(tmp_path) -> None:
    """An environment with get_reward() is a reward source named after its class (as TRL logs it):
    the recipe check takes the factory's name for it, and the run's start checks the loaded class."""
    from ling_rl.driver.session import reward_specs
    from ling_rl.environments.config import EnvironmentConfig
    from ling_rl.environments.loading import resolve_environment

    (tmp_path / "envs.py").write_text(
        "class Scored:\n"
        "    def reset(self, **row):\n        return None\n"
        "    def act(self, x: int) -> int:\n        \"\"\"Act.\n\n        Args:\n            x: A number.\n        \"\"\"\n        return x\n"
        "    def get_reward(self) -> float:\n        return 1.0\n"
        "def make_scored():\n    return Scored()\n")
    base = {"model": {"tiny": "tiny"}, "data": {"train": "data/arith/train.jsonl", "chat_template": True}, "rewards": [],
            "curriculum": {"dynamic_sampling": True, "correctness": "Scored"}}
    recipe = parse_recipe({**base, "environment": {"factory": f"{tmp_path}/envs.py:Scored"}})
    env = resolve_environment(recipe.environment)
    assert [s.key for s in reward_specs(recipe, env)] == ["Scored"]

    # A factory function passes the recipe check under its own name; the class it builds is named otherwise.
    recipe = parse_recipe({**base, "environment": {"factory": f"{tmp_path}/envs.py:make_scored"},
                           "curriculum": {"dynamic_sampling": True, "correctness": "make_scored"}})
    with pytest.raises(RecipeError, match=r"curriculum.correctness is 'make_scored', which is not one of the reward "
                                          r"sources \(Scored\): an environment's get_reward\(\) is named after its class"):
        reward_specs(recipe, resolve_environment(recipe.environment))
    with pytest.raises(RecipeError, match="curriculum.correctness: is 'Other', which is not one of the rewards"):
        parse_recipe({**base, "environment": {"factory": f"{tmp_path}/envs.py:Scored"},
                      "curriculum": {"dynamic_sampling": True, "correctness": "Other"}})
