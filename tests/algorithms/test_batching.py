"""build_train_batch and the recipe check read `needs_pairs` from the registered estimator, so a
user-registered estimator that needs pairs is treated like group_norm."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ling_rl.algorithms import AlgorithmConfig, compute_advantages
from ling_rl.algorithms.advantages import AdvantageEstimator
from ling_rl.algorithms.config import AdvantageConfig
from ling_rl.algorithms.registries import ADVANTAGE_ESTIMATORS
from ling_rl.driver.batching import build_train_batch
from ling_rl.config import RecipeError, parse_recipe
from ling_rl.types import Rollout, Sample, ScoredRollout

PAIRED = "test_batching_paired"
UNPAIRED = "test_batching_unpaired"


def _centered(rewards: Tensor, group_index: Tensor, sizes: Tensor, cfg: AdvantageConfig) -> Tensor:
    means = torch.zeros(len(sizes), dtype=rewards.dtype).index_add_(0, group_index, rewards) / sizes
    return rewards - means[group_index]


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    for name, needs_pairs in ((PAIRED, True), (UNPAIRED, False)):
        if name not in ADVANTAGE_ESTIMATORS:
            ADVANTAGE_ESTIMATORS.add(name, AdvantageEstimator(_centered, needs_pairs=needs_pairs))


def _scored(group: int, reward: float, skipped: bool = False) -> ScoredRollout:
    sample = Sample(id=f"p{group}", prompt="q", prompt_ids=[1, 2])
    rollout = Rollout(sample=sample, group=group, response_ids=[5, 6, 7], response_text="x", inf_logprobs=[-0.1] * 3,
                      finish_reason="stop", policy_version=0)
    return ScoredRollout(rollout=rollout, reward=reward, breakdown={"r": None if skipped else reward}, skipped=skipped)


# Group 0: two trained responses. Group 1: one trained response left by a skip.
BATCH = [_scored(0, 1.0), _scored(0, 0.0), _scored(1, 1.0), _scored(1, 0.0, skipped=True)]


@pytest.mark.parametrize(("estimator", "trained"), [
    ("group_norm", [True, True, False, False]),
    (PAIRED, [True, True, False, False]),
    ("group_mean", [True, True, True, False]),
    (UNPAIRED, [True, True, True, False]),
])
def test_a_response_left_alone_in_its_group_is_trained_only_without_pairs(estimator: str, trained: list[bool]) -> None:
    algo = AlgorithmConfig.model_validate({"advantage": {"type": estimator}})
    assert algo.advantage.needs_pairs == (estimator in ("group_norm", PAIRED))
    batch, metrics = build_train_batch(BATCH, algo, None, pad_id=0)
    assert batch.response_mask.any(dim=1).tolist() == trained
    assert metrics["batch/trained_responses"] == sum(trained)


def test_an_estimator_that_needs_pairs_refuses_singleton_groups() -> None:
    with pytest.raises(ValueError, match=f"{PAIRED!r} needs at least 2 responses per group; group 1 has 1"):
        compute_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 5]), AdvantageConfig(type=PAIRED))


@pytest.mark.parametrize("estimator", ["rloo", PAIRED])
def test_the_recipe_refuses_group_size_one_for_an_estimator_that_needs_pairs(estimator: str) -> None:
    data = {"model": {"tiny": "tiny"}, "data": {"train": "data/arith/train.jsonl"},
            "rewards": [{"name": "exact_answer"}], "rollout": {"group_size": 1},
            "algorithm": {"advantage": {"type": estimator}}}
    expected = f"rollout.group_size: is 1, but algorithm.advantage.type={estimator} needs at least 2 responses per prompt"
    with pytest.raises(RecipeError, match=expected):
        parse_recipe(data)
    data["algorithm"]["advantage"]["type"] = UNPAIRED
    assert parse_recipe(data).rollout.group_size == 1


def test_a_plain_function_registered_as_an_estimator_is_refused_with_the_fix() -> None:
    name = "test_batching_plain_function"
    if name not in ADVANTAGE_ESTIMATORS:
        ADVANTAGE_ESTIMATORS.add(name, _centered)
    expected = f"{name!r} is registered without `needs_pairs`; register it as .*AdvantageEstimator"
    with pytest.raises(ValueError, match=expected):
        AdvantageConfig(type=name)
