"""TRL's reward functions unchanged: conversational inputs with `data.chat_template`, metric names
by function name or `alias`, and duplicate names as a recipe error."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from conftest import PLUGIN_DIR, make_rollouts
from ling_rl.config import RecipeError, parse_recipe
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.pool import RewardPool

SYSTEM = {"role": "system", "content": "Answer with a boxed number."}
GROUPS = [
    ("What is 2+10?", "12", ["<think>add</think> \\boxed{12}", "\\boxed{13}", "12"]),
    ("What is 3+4?", "7", ["<think>x</think>7", "<think>open \\boxed{7}"]),
]
TRL = [RewardSpec(name="trl.rewards:think_format_reward"), RewardSpec(name="trl.rewards:accuracy_reward"),
       RewardSpec(name=f"{PLUGIN_DIR}/trl_style.py:conversation_shape"), RewardSpec(name="exact_answer")]


def _conversational(rollouts: list[Any]) -> list[Any]:
    """The rollouts as `data.chat_template: true` makes them: each sample carries its messages."""
    samples = {}
    for r in rollouts:
        sample = samples.setdefault(id(r.sample), dataclasses.replace(
            r.sample, messages=[SYSTEM, {"role": "user", "content": r.sample.prompt}]))
        r.sample = sample
    return rollouts


def test_metric_names_are_function_names_or_aliases() -> None:
    names = {"trl.rewards:think_format_reward": "think_format_reward", "rewards/mine.py:score": "score",
             "my_pkg.rewards.score": "score", "exact_answer": "exact_answer", "pkg.mod:Scorer": "Scorer"}
    assert {name: RewardSpec(name=name).key for name in names} == names
    assert RewardSpec(name="rewards/mine.py:score", alias="mine").key == "mine"


def test_duplicate_names_are_a_recipe_error_naming_both_entries() -> None:
    recipe = {"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"},
              "rewards": [{"name": "exact_answer"}, {"name": "a/b.py:score"}, {"name": "pkg.mod.score"}]}
    with pytest.raises(RecipeError, match=r"rewards: rewards.1 \(name 'a/b.py:score'\) and rewards.2 \(name "
                                          r"'pkg.mod.score'\) both log as 'score' .*give one of them a distinct `alias`"):
        parse_recipe(recipe)
    recipe["rewards"][2]["alias"] = "score2"
    assert [r.key for r in parse_recipe(recipe).rewards] == ["exact_answer", "score", "score2"]
    recipe["rewards"][2]["alias"] = "a/b"
    with pytest.raises(RecipeError, match=r"rewards.2.alias: String should match pattern"):
        parse_recipe(recipe)


def test_trl_rewards_get_conversations_and_ling_rl_plugins_get_text(ray_session: None) -> None:
    with RewardPool(TRL, num_workers=1, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(_conversational(make_rollouts(GROUPS)))
    assert all(m.failures == 0 for m in metrics.plugins.values()), {k: m.errors for k, m in metrics.plugins.items()}
    column = {key: [s.breakdown[key] for s in scored] for key in metrics.plugins}
    assert column["think_format_reward"] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert column["accuracy_reward"] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert column["conversation_shape"] == [1.0] * 5
    assert column["exact_answer"] == [1.0, 0.0, 1.0, 1.0, 1.0]  # @reward plugin: the text (the last number)
    assert set(metrics.as_dict()) >= {"reward/think_format_reward/mean", "reward/conversation_shape/mean"}


def test_plain_text_data_gives_every_plugin_strings_as_trl_does(ray_session: None) -> None:
    """Without a chat template the data is not conversational: TRL-style plugins get strings too
    (TRL's built-in rewards, written for conversations, then fail, as they do in TRL)."""
    specs = [RewardSpec(name=f"{PLUGIN_DIR}/trl_style.py:conversation_shape"), RewardSpec(name="trl.rewards:think_format_reward")]
    with RewardPool(specs, num_workers=1, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(make_rollouts(GROUPS))
    assert [s.breakdown["conversation_shape"] for s in scored] == [0.0] * 5
    assert metrics.plugins["think_format_reward"].failures == metrics.plugins["think_format_reward"].calls
    assert "TypeError: string indices must be integers" in metrics.plugins["think_format_reward"].errors[0]
