"""Generation strategies: the part of the driver loop (`ling_rl/driver/loop.py`) that differs between
synchronous and asynchronous RL; `rollout.max_staleness` chooses one (`loop.generation_strategy`).
k = 0: `SynchronousGeneration` (here): each step generates, scores and filters its own groups, and
the new weights reach the engines right after the learner's update. k >= 1: `KStaleGeneration`
(ling_rl/driver/kstale.py): the engines generate while the learner trains, partial rollouts
continue under newer weights, no trained token is older than k versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ling_rl.curriculum.dynamic_sampling import collect_groups
from ling_rl.driver import session as sessions
from ling_rl.rollout.requests import make_requests, request_seed, to_rollouts
from ling_rl.tracking import PhaseTimer
from ling_rl.types import ScoredRollout, TrainBatch


@dataclass
class StepBatch:
    """What a step trains on. `kept`: the responses of the groups to train on (dynamic sampling's
    fallback: all marked skipped). `seen`: every response scored in the step, flat groups included
    (curriculum, reward signal; none when the batch was scored in earlier steps, k >= 2).
    `reward_metrics`: `reward/*` of the step's first scoring (the policy as sampled). `version`: the
    learner's version, for each token's lag (`TrainBatch.version_lag`; None: synchronous)."""

    kept: list[ScoredRollout]
    seen: list[ScoredRollout]
    reward_metrics: dict[str, float]
    dynamic_metrics: dict[str, float] = field(default_factory=dict)
    version: int | None = None


class GenerationStrategy(Protocol):
    """What the loop calls, once per step, in this order. `next_batch` generates, scores and
    filters; `after_train` (the learner holds version step + 1) returns the step's `sync/*` metrics
    and, with `drain`, leaves nothing in flight (a checkpoint or the end follows), with `sync`, the
    engines holding the learner's weights (an evaluation follows); `step_metrics` are the strategy's
    own (`async/*`); `checkpoint_state` is what a checkpoint holds of it (None: nothing)."""

    def next_batch(self, step: int, timer: PhaseTimer) -> StepBatch: ...

    def train(self, batch: TrainBatch) -> dict[str, float]: ...

    def after_train(self, step: int, skipped: bool, timer: PhaseTimer, *, drain: bool,
                    sync: bool) -> dict[str, float]: ...

    def step_metrics(self, step: int) -> dict[str, float]: ...

    def checkpoint_state(self) -> dict[str, Any] | None: ...


class SynchronousGeneration:
    """Generate, score and filter the step's groups, train, then sync: every response is sampled by
    the weights the learner has at the start of its step."""

    def __init__(self, s: sessions.Session) -> None:
        self.s = s

    def next_batch(self, step: int, timer: PhaseTimer) -> StepBatch:
        s, cfg = self.s, self.s.recipe
        first = score(s, timer, s.next_prompts(cfg.rollout.prompts_per_step, step), step)
        if not cfg.curriculum.dynamic_sampling:
            return StepBatch(first, first, s.last_reward_metrics)
        kept, dyn_metrics, seen = collect_groups(first, lambda n: score(s, timer, s.next_prompts(n, step), step),
                                                 cfg.rollout.prompts_per_step, cfg.curriculum.max_refill_rounds,
                                                 s.curriculum.filter_value)
        return StepBatch(kept, seen, s.last_reward_metrics, dyn_metrics)

    def train(self, batch: TrainBatch) -> dict[str, float]:
        return self.s.learner.train_step(batch)

    def after_train(self, step: int, skipped: bool, timer: PhaseTimer, *, drain: bool,
                    sync: bool) -> dict[str, float]:
        """The weights reach the engines now (so `drain` and `sync` hold); a skipped batch changed
        none: the engines keep theirs."""
        if skipped:
            return {}
        with timer.phase("sync"):
            return self.s.sync_weights(step + 1)  # sync/gather_s, sync/transfer_s, sync/load_s

    def step_metrics(self, step: int) -> dict[str, float]:
        return {}

    def checkpoint_state(self) -> dict[str, Any] | None:
        return None


def score(s: sessions.Session, timer: PhaseTimer, samples: list, step: int) -> list[ScoredRollout]:
    """Generate a group per prompt and score it. Refill rounds of dynamic sampling call this again
    within the step: their groups (and seeds) continue after the ones already generated."""
    cfg = s.recipe.rollout
    offset = 0 if not s.step_groups or s.step_groups[0] != step else s.step_groups[1]
    s.step_groups = (step, offset + len(samples))
    with timer.phase("generate"):
        if s.episodes is not None:  # multi-turn: each response is an episode with tool calls
            turns = s.episodes.cfg.max_turns
            rollouts = s.episodes.run(
                s.rollout, samples, cfg.group_size,
                lambda g, j, t: request_seed(cfg, step, g * turns + t) + j, (cfg.temperature, cfg.top_p, cfg.top_k),
                s.curriculum.max_response_tokens(), version=step, group_offset=offset)
        else:
            requests = make_requests(samples, cfg, step, max_tokens=s.curriculum.max_response_tokens(), offset=offset)
            outputs = s.rollout.generate(requests, cfg.temperature, cfg.top_p, cfg.top_k)
            rollouts = to_rollouts(samples, outputs, version=step, group_offset=offset)
    with timer.phase("reward"):
        scored, metrics = s.rewards.score(rollouts)
    if offset == 0:  # the step's first round: the reward metrics of the policy as sampled
        s.last_reward_metrics = metrics.as_dict()
    return scored
