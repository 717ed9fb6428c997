"""Dynamic sampling (DAPO; docs: Evo-CoT and DFT): drop flat groups and refill, within a bound.

A group is flat when the value compared inside it is the same for all of its trained responses:
by default the curriculum's correctness verdict (all correct or all wrong, the Evo-CoT rule), or
the total reward (`curriculum.filter_on`; `Curriculum.filter_value` gives the value). Such a group
teaches nothing about being right, only (through a length term in the total) about being short.
`collect_groups` drops flat groups and asks the driver for that many new prompts, at most
`max_rounds` extra generation rounds per step:

    first (scored groups) --keep non-flat--> kept < target? --more(missing)--> keep non-flat ...
                                                                 (at most max_rounds calls)

Every group generated, flat or not, is returned in `seen` so the curriculum can update the pass
rates of prompts that were all-correct or all-wrong (difficulty known without re-sampling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ling_rl.curriculum.evo_cot import split_groups

if TYPE_CHECKING:  # ling_rl.types imports torch; this module stays pure Python
    from ling_rl.types import ScoredRollout

FLAT_TOLERANCE = 1e-9
"""Values within this of each other count as equal (weighted sums of equal scores may differ in the last bit)."""

GroupValue = Callable[["ScoredRollout"], "float | None"]
"""A response's value compared inside its group; None leaves the response out of the comparison."""


class Collected(NamedTuple):
    """What `collect_groups` returns; unpacks as `kept, metrics, seen = collect_groups(...)`."""

    kept: list[ScoredRollout]
    """Responses to train on: at most `target_groups` non-flat groups, `rollout.group` renumbered
    0..k-1 (copies; the originals in `seen` keep their numbers). On fallback, copies of `first`,
    all marked `skipped` (nothing to train on)."""
    metrics: dict[str, float]
    """`dynamic/*` metrics of the step."""
    seen: list[ScoredRollout]
    """Every scored response of every round with its original group number: give it to
    `Curriculum.update` so flat groups still update pass rates."""


def total_reward(scored: ScoredRollout) -> float:
    """The `GroupValue` of `curriculum.filter_on: reward`."""
    return scored.reward


def is_flat(group: list[ScoredRollout], value: GroupValue) -> bool:
    """True when the `value`s of the group's trained (not skipped) responses are all equal.

    Responses whose value is None are left out; a group with fewer than two values left is flat
    too: it has nothing to compare.
    """
    values = [v for v in (value(s) for s in group if not s.skipped) if v is not None]
    return len(values) < 2 or max(values) - min(values) <= FLAT_TOLERANCE


def collect_groups(
    first: list[ScoredRollout],
    more: Callable[[int], list[ScoredRollout]],
    target_groups: int,
    max_rounds: int,
    value: GroupValue,
) -> Collected:
    """Keep the non-flat groups of `first`, refilling with `more(missing_groups)` up to `max_rounds` times.

    `more(n)` samples, generates and scores n new prompts (group numbers continuing after the
    ones already used this step) and returns their scored responses. Groups are told apart by
    (rollout.group, sample id), and a group is flat by `is_flat(group, value)`. The result holds
    at most `target_groups` groups, the earliest kept.

    Fallback: if no group is kept after the last round, `kept` is a copy of `first` with every
    response marked `skipped`, and `dynamic/fallback` is 1. The batch keeps its regular shape (the
    metrics and the checkpoint cadence see a regular step), but nothing in it is trained on, so the
    learner skips the update (`carries_signal`). Its flat groups may still differ in total reward
    (a length term), and training on those differences is what filtering prevents.
    """
    if target_groups < 1:
        raise ValueError(f"target_groups must be >= 1, got {target_groups}")
    if max_rounds < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
    seen = list(first)
    kept: list[list[ScoredRollout]] = []
    generated = flat = 0

    def take(batch: list[ScoredRollout]) -> None:
        nonlocal generated, flat
        for group in split_groups(batch):
            generated += 1
            if is_flat(group, value):
                flat += 1
            else:
                kept.append(group)

    take(first)
    rounds = 0
    while len(kept) < target_groups and rounds < max_rounds:
        batch = more(target_groups - len(kept))
        rounds += 1
        seen.extend(batch)
        take(batch)

    metrics = {
        "dynamic/flat_groups_dropped": float(flat),
        "dynamic/refill_rounds": float(rounds),
        "dynamic/kept_groups": float(min(len(kept), target_groups)),
        "dynamic/generated_groups": float(generated),
        "dynamic/fallback": float(not kept),
    }
    if not kept:
        return Collected([dataclasses.replace(s, skipped=True) for s in first], metrics, seen)
    renumbered = [
        dataclasses.replace(s, rollout=dataclasses.replace(s.rollout, group=index))
        for index, group in enumerate(kept[:target_groups])
        for s in group
    ]
    return Collected(renumbered, metrics, seen)
