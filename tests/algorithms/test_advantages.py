"""Advantage estimators: golden values by hand, ragged groups, flat-group flags, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from ling_rl.algorithms import compute_advantages
from ling_rl.algorithms.config import AdvantageConfig

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)


def test_group_norm_golden() -> None:
    # Group 0: mean 0.5, sample std sqrt(4 * 0.25 / 3) = sqrt(1/3): A = +-0.5 * sqrt(3).
    # Group 1: all equal: A = 0 and the group is flagged flat.
    adv, flat = compute_advantages(REWARDS, None, AdvantageConfig(type="group_norm", eps=1e-9))
    a = 0.5 * math.sqrt(3)
    torch.testing.assert_close(adv, torch.tensor([[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    assert flat.tolist() == [[False] * 4, [True] * 4]


def test_group_mean_golden() -> None:
    adv, _ = compute_advantages(REWARDS, None, AdvantageConfig(type="group_mean"))
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4], dtype=torch.float64))


def test_rloo_golden() -> None:
    # 1 - mean(0, 0, 1) = 2/3; 0 - mean(1, 0, 1) = -2/3.
    adv, _ = compute_advantages(REWARDS, None, AdvantageConfig(type="rloo"))
    t = 2 / 3
    torch.testing.assert_close(adv, torch.tensor([[t, -t, -t, t], [0.0] * 4], dtype=torch.float64))


def test_ragged_groups_by_id_in_any_order() -> None:
    # Group 7: rewards 1, 0 -> mean 0.5, sample std sqrt(0.5): A = +-0.5 / sqrt(0.5).
    # Group 3: rewards 2, 4, 6 interleaved -> mean 4, sample std 2: A = -1, 0, 1.
    rewards = torch.tensor([2.0, 1.0, 4.0, 0.0, 6.0], dtype=torch.float64)
    group_ids = torch.tensor([3, 7, 3, 7, 3])
    adv, flat = compute_advantages(rewards, group_ids, AdvantageConfig(eps=1e-12))
    b = 0.5 / math.sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([-1.0, b, 0.0, -b, 1.0], dtype=torch.float64))
    assert not flat.any()


@pytest.mark.parametrize("estimator", ["group_norm", "rloo"])
def test_singleton_group_is_refused(estimator: str) -> None:
    with pytest.raises(ValueError, match="at least 2 responses per group; group 1 has 1"):
        compute_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 5]), AdvantageConfig(type=estimator))


def test_singleton_group_with_group_mean_is_zero_and_flat() -> None:
    adv, flat = compute_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 5]), AdvantageConfig(type="group_mean"))
    assert adv.tolist() == [0.5, -0.5, 0.0] and flat.tolist() == [False, False, True]


def test_bad_shapes_and_values_are_refused() -> None:
    cfg = AdvantageConfig()
    with pytest.raises(ValueError, match="num_groups, G"):
        compute_advantages(torch.tensor([1.0, 0.0]), None, cfg)
    with pytest.raises(ValueError, match="group_ids"):
        compute_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 0]), cfg)
    with pytest.raises(ValueError, match="finite"):
        compute_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]), cfg)
    with pytest.raises(ValueError, match="floating-point"):
        compute_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), cfg)


def test_group_order_does_not_change_advantages() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(6, 5, generator=gen, dtype=torch.float64)
    perm = torch.randperm(6, generator=gen)
    for estimator in ("group_norm", "group_mean", "rloo"):
        cfg = AdvantageConfig(type=estimator)
        torch.testing.assert_close(compute_advantages(rewards, None, cfg).advantages[perm],
                                   compute_advantages(rewards[perm], None, cfg).advantages)
