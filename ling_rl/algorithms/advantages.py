"""Critic-free advantages from the rewards of a prompt's group of responses.

Groups may have different sizes; each estimator sees flat rewards and the group index of every
response, and works with segment sums (index_add), so the cost does not depend on the number of
groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from ling_rl.algorithms.config import AdvantageConfig
from ling_rl.algorithms.registries import ADVANTAGE_ESTIMATORS


class AdvantageFn(Protocol):
    """rewards [N] float, group_index [N] in 0..num_groups-1, sizes [num_groups] -> advantages [N]."""

    def __call__(self, rewards: Tensor, group_index: Tensor, sizes: Tensor, cfg: AdvantageConfig) -> Tensor: ...


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered advantage estimator: the function, and what it needs of a group.

        ADVANTAGE_ESTIMATORS.add("my_adv", AdvantageEstimator(my_adv, needs_pairs=False))
    """

    fn: AdvantageFn

    needs_pairs: bool
    """Whether its baseline needs two responses of the same prompt (group_norm, rloo). Then a
    response left alone in its group by skips is not trained on (`build_train_batch`), a
    singleton group is an error here, and a recipe needs `rollout.group_size >= 2`."""

    def __call__(self, rewards: Tensor, group_index: Tensor, sizes: Tensor, cfg: AdvantageConfig) -> Tensor:
        return self.fn(rewards, group_index, sizes, cfg)


class AdvantageResult(NamedTuple):
    advantages: Tensor
    """Per-response advantage, same shape as the rewards."""

    flat: Tensor
    """True where the response's group has all-equal rewards (no signal; dynamic sampling may drop it)."""


def _group_sum(values: Tensor, group_index: Tensor, num_groups: int) -> Tensor:
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group_index, values)


def _require_pairs(name: str, sizes: Tensor) -> None:
    smallest = int(sizes.min())
    if smallest < 2:
        group = int(torch.nonzero(sizes < 2)[0])
        raise ValueError(
            f"advantage estimator {name!r} needs at least 2 responses per group; group {group} has {smallest}"
        )


def group_norm(rewards: Tensor, group_index: Tensor, sizes: Tensor, cfg: AdvantageConfig) -> Tensor:
    """GRPO: (R_i - mean) / (std + eps), std with Bessel's correction as in TRL and verl."""
    n = sizes.to(rewards.dtype)
    mean = _group_sum(rewards, group_index, len(sizes)) / n
    centered = rewards - mean[group_index]
    var = _group_sum(centered * centered, group_index, len(sizes)) / (n - 1)
    return centered / (var.sqrt()[group_index] + cfg.eps)


def group_mean(rewards: Tensor, group_index: Tensor, sizes: Tensor, cfg: AdvantageConfig) -> Tensor:
    """Dr.GRPO: R_i - mean (no std division, so no difficulty re-weighting)."""
    mean = _group_sum(rewards, group_index, len(sizes)) / sizes.to(rewards.dtype)
    return rewards - mean[group_index]


def rloo(rewards: Tensor, group_index: Tensor, sizes: Tensor, cfg: AdvantageConfig) -> Tensor:
    """REINFORCE leave-one-out: R_i - mean_{j != i} R_j."""
    total = _group_sum(rewards, group_index, len(sizes))[group_index]
    others = (total - rewards) / (sizes.to(rewards.dtype)[group_index] - 1)
    return rewards - others


ADVANTAGE_ESTIMATORS.add("group_norm", AdvantageEstimator(group_norm, needs_pairs=True))
ADVANTAGE_ESTIMATORS.add("group_mean", AdvantageEstimator(group_mean, needs_pairs=False))
ADVANTAGE_ESTIMATORS.add("rloo", AdvantageEstimator(rloo, needs_pairs=True))


def compute_advantages(rewards: Tensor, group_ids: Tensor | None, cfg: AdvantageConfig) -> AdvantageResult:
    """Advantages of every response, plus the flag of zero-variance groups.

    rewards: [N] with `group_ids` [N] (any integers; equal ids share a prompt), or
    [num_groups, G] with `group_ids=None` (each row is a group).
    """
    if not torch.is_floating_point(rewards):
        raise ValueError(f"rewards must be a floating-point tensor, got {rewards.dtype}")
    if group_ids is None:
        if rewards.ndim != 2:
            raise ValueError(f"rewards without group_ids must be [num_groups, G], got shape {tuple(rewards.shape)}")
        shape = rewards.shape
        group_ids = torch.arange(shape[0], device=rewards.device).repeat_interleave(shape[1])
        flat_rewards = rewards.reshape(-1)
    else:
        if rewards.ndim != 1 or group_ids.shape != rewards.shape:
            raise ValueError(
                f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
            )
        shape = rewards.shape
        flat_rewards = rewards
    if flat_rewards.numel() == 0:
        empty = torch.zeros(shape, dtype=rewards.dtype, device=rewards.device)
        return AdvantageResult(empty, torch.zeros(shape, dtype=torch.bool, device=rewards.device))
    if not bool(torch.isfinite(flat_rewards).all()):
        raise ValueError("rewards must be finite (map failed or skipped samples to a value, or drop them)")
    _, group_index, sizes = torch.unique(group_ids, return_inverse=True, return_counts=True)
    estimator: AdvantageEstimator = ADVANTAGE_ESTIMATORS.get(cfg.type)
    if estimator.needs_pairs:
        _require_pairs(cfg.type, sizes)
    advantages = estimator(flat_rewards, group_index, sizes, cfg)

    num_groups = len(sizes)
    high = torch.full((num_groups,), -torch.inf, dtype=rewards.dtype, device=rewards.device)
    low = torch.full((num_groups,), torch.inf, dtype=rewards.dtype, device=rewards.device)
    high = high.scatter_reduce(0, group_index, flat_rewards, reduce="amax")
    low = low.scatter_reduce(0, group_index, flat_rewards, reduce="amin")
    flat = (high == low)[group_index]
    return AdvantageResult(advantages.reshape(shape), flat.reshape(shape))
