"""Stopping a run that trains on no reward signal (`reward_signal:` section).

A step has no reward signal when every call of a weighted plugin failed or timed out (its
`error_value` stands in for every score, e.g. a judge server that went away), when any call of a
weighted plugin hit an infrastructure failure (`InfrastructureError`: its sandbox or browser did not
start; those samples were skipped, and a reward that cannot run must not go unnoticed), or when every group
the step generated is flat in total reward (all its trained responses got the same reward, so every
group-relative advantage is zero). `SignalMonitor` counts such steps in
a row; after `reward_signal.max_failed_steps` of them the driver saves a checkpoint and stops with
`NoRewardSignal`, instead of spending the rest of the run on updates that learn nothing.

The count starts again at 0 when a run resumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ling_rl.curriculum.dynamic_sampling import is_flat, total_reward
from ling_rl.curriculum.evo_cot import split_groups
from ling_rl.reward.config import RewardSpec

if TYPE_CHECKING:  # ling_rl.types imports torch
    from ling_rl.types import ScoredRollout


class NoRewardSignal(RuntimeError):
    """The reward signal was absent for `reward_signal.max_failed_steps` steps in a row; the message
    says why (the failing plugin, or every group flat) and names the checkpoint saved."""


class SignalMonitor:
    """Counts consecutive steps without reward signal; `observe` says when the run must stop."""

    def __init__(self, max_failed_steps: int, specs: Sequence[RewardSpec]) -> None:
        self.max_failed_steps = max_failed_steps
        self.weighted = [spec.key for spec in specs if spec.weight != 0]
        self.streak_start: int | None = None
        """First step of the current run of steps without signal (None: the last step had signal)."""

    def observe(self, step: int, reward_metrics: Mapping[str, float], scored: Sequence[ScoredRollout]) -> str | None:
        """Record `step`; returns why the run must stop now, or None.

        `reward_metrics`: the step's `RewardMetrics.as_dict()` (`reward/<plugin>/calls`, `failures`,
        `timeouts`); `scored`: every scored response of the step (refill rounds included)."""
        reason = absent_signal(reward_metrics, scored, self.weighted)
        if reason is None:
            self.streak_start = None
            return None
        if self.streak_start is None:
            self.streak_start = step
        steps = step - self.streak_start + 1
        if self.max_failed_steps == 0 or steps < self.max_failed_steps:
            return None
        return (f"no reward signal for {steps} consecutive steps ({self.streak_start}-{step}): {reason}; "
                f"stopped (reward_signal.max_failed_steps={self.max_failed_steps}, 0 disables this check)")


def absent_signal(reward_metrics: Mapping[str, float], scored: Sequence[ScoredRollout], weighted: Sequence[str]) -> str | None:
    """Why a step carries no reward signal, or None when it does."""
    failed = [key for key in weighted if _every_call_failed(reward_metrics, key)]
    if failed:
        return "; ".join(f"every call of reward plugin {key!r} failed" for key in failed)
    broken = {key: reward_metrics.get(f"reward/{key}/infra_failures", 0) for key in weighted}
    if any(broken.values()):
        return "; ".join(
            f"{n:g} of {reward_metrics.get(f'reward/{key}/calls', 0):g} calls of reward plugin {key!r} hit an "
            "infrastructure failure (a sandbox or browser that did not start; see the reward worker's log)"
            for key, n in broken.items() if n
        )
    # The total reward, whatever dynamic sampling filters on: advantages are computed from it.
    if all(is_flat(group, total_reward) for group in split_groups(list(scored))):
        return "every group flat (the responses of each prompt all got the same total reward, or were skipped)"
    return None


def _every_call_failed(reward_metrics: Mapping[str, float], key: str) -> bool:
    calls = reward_metrics.get(f"reward/{key}/calls", 0)
    failed = reward_metrics.get(f"reward/{key}/failures", 0) + reward_metrics.get(f"reward/{key}/timeouts", 0)
    return calls > 0 and failed >= calls
