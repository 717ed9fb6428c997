"""Evo-CoT curriculum state: per-prompt pass rates, difficulty buckets,
the stage schedule, and the data mix. Pure Python; the driver calls it once per step:

    curriculum.annotate(samples)          copies with pass_rate / length_alpha / difficulty_bucket
        |                                 columns (reach reward plugins as keyword lists)
    generate (max_response_tokens()), score
        |
    curriculum.update(step, all_scored)   pass rates (flat groups too), rolling accuracy, advance
        |
    checkpoint: curriculum.state_dict()   JSON-serializable; load_state_dict() on resume

Bucket rule: a pass rate r falls in the bucket of the largest alpha-table edge e with r > e; the
`0.0` edge takes every other rate (r = 0 included). With the default table {0.8, 0.5, 0.2, 0.0},
r = 0.8 is in bucket `0.5`, r = 0.81 in bucket `0.8`, r = 0.2 in bucket `0.0`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ling_rl.curriculum.buckets import bucket_index
from ling_rl.curriculum.config import CurriculumConfig, StageConfig

if TYPE_CHECKING:  # ling_rl.types imports torch; this module stays pure Python
    from ling_rl.types import Sample, ScoredRollout

STATE_VERSION = 2
"""2: pass rates keyed by data source, then sample id (1: by sample id alone)."""


class PassRateTracker:
    """Exponential moving average of each prompt's group accuracy, keyed by (`Sample.source`,
    `Sample.id`): an id alone repeats across sources (the row indices "0", "1", ... of every
    dataset without an `id` column), and two prompts must never share one rate.

    The first observed group sets a prompt's rate; each later one blends in with weight `ema`.
    Prompts never observed report `initial`.
    """

    def __init__(self, ema: float, initial: float) -> None:
        if not 0 < ema <= 1:
            raise ValueError(f"ema must be in (0, 1], got {ema}")
        self.ema = ema
        self.initial = initial
        self.rates: dict[tuple[str, str], float] = {}

    def rate(self, sample_id: str, source: str = "") -> float:
        return self.rates.get((source, sample_id), self.initial)

    def update(self, sample_id: str, group_accuracy: float, source: str = "") -> float:
        """Blend in one group's accuracy (fraction of counted responses that are correct); returns the new rate."""
        old = self.rates.get((source, sample_id))
        new = group_accuracy if old is None else (1 - self.ema) * old + self.ema * group_accuracy
        self.rates[(source, sample_id)] = new
        return new

    def __len__(self) -> int:
        return len(self.rates)

    def state_dict(self) -> dict[str, dict[str, float]]:
        """Source -> sample id -> rate (JSON has no tuple keys)."""
        by_source: dict[str, dict[str, float]] = {}
        for (source, sample_id), rate in self.rates.items():
            by_source.setdefault(source, {})[sample_id] = rate
        return by_source

    def load_state_dict(self, by_source: dict[str, dict[str, float]]) -> None:
        self.rates = {(str(source), str(k)): float(v) for source, rates in by_source.items() for k, v in rates.items()}


def bucket_edge(rate: float, alpha_table: dict[str, float]) -> str:
    """The alpha-table key of `rate`'s bucket (`bucket_index`: the largest edge strictly below `rate`, else `0.0`)."""
    keys = list(alpha_table)
    return keys[bucket_index(rate, [float(key) for key in keys])]


def alpha_for(rate: float, stage: StageConfig) -> float:
    """Length-reward weight of a prompt with pass rate `rate` in `stage`."""
    return stage.alpha[bucket_edge(rate, stage.alpha)]


def group_key(scored: ScoredRollout) -> tuple[int, str]:
    """Identity of a response's group within one step: (rollout.group, sample id)."""
    return scored.rollout.group, scored.rollout.sample.id


def split_groups(scored: list[ScoredRollout]) -> list[list[ScoredRollout]]:
    """`scored` split into groups by `group_key`, in order of first appearance."""
    groups: dict[tuple[int, str], list[ScoredRollout]] = {}
    for s in scored:
        groups.setdefault(group_key(s), []).append(s)
    return list(groups.values())


def _correctness_value(curriculum: Curriculum, scored: ScoredRollout) -> float | None:
    verdict = curriculum.is_correct(scored)
    return None if verdict is None else float(verdict)


def _correct_reward_value(curriculum: Curriculum, scored: ScoredRollout) -> float | None:
    # A wrong response counts as 0 whatever its length term: an all-wrong group is flat, since the
    # only thing group normalization could teach it is to be wrong more briefly.
    verdict = curriculum.is_correct(scored)
    return None if verdict is None else (scored.reward if verdict else 0.0)


_FILTER_VALUES: dict[str, Callable[[Curriculum, ScoredRollout], float | None]] = {
    "correctness": _correctness_value,
    "reward": lambda curriculum, scored: scored.reward,
    "correct_reward": _correct_reward_value,
}
"""`curriculum.filter_on` -> the value of a response that dynamic sampling compares within its group."""


class Curriculum:
    """The stage schedule and pass-rate state of an Evo-CoT run.

    `default_max_tokens` is rollout.max_response_tokens; `train_source` is data.train, the single
    source of stages without a `data_mix`.
    """

    def __init__(self, cfg: CurriculumConfig, default_max_tokens: int, train_source: str = "data.train") -> None:
        self.cfg = cfg
        self.default_max_tokens = default_max_tokens
        self.train_source = train_source
        self.stages = list(cfg.stages) or [StageConfig(name="default")]
        self.stage_index = 0
        self.steps_in_stage = 0
        self.tracker = PassRateTracker(cfg.pass_rate_ema, cfg.initial_pass_rate)
        self.window: list[tuple[int, int]] = []
        """(correct, counted) responses of each of the stage's last `accuracy_window` steps."""
        self.last_step: int | None = None
        """Step of the last `update` (each step is recorded once, with all of its groups)."""

    @property
    def stage(self) -> StageConfig:
        return self.stages[self.stage_index]

    @property
    def is_last_stage(self) -> bool:
        return self.stage_index == len(self.stages) - 1

    def max_response_tokens(self) -> int:
        return self.stage.max_response_tokens or self.default_max_tokens

    def annotate(self, samples: list[Sample]) -> list[Sample]:
        """Copies of `samples` with `pass_rate`, `length_alpha` and `difficulty_bucket` (alpha-table
        key) added to their columns. Copies: a data source hands out the same `Sample` objects every
        epoch, and a group still in flight (async) must keep the alpha of its own draw."""
        out = []
        for sample in samples:
            rate = self.tracker.rate(sample.id, sample.source)
            edge = bucket_edge(rate, self.stage.alpha)
            columns = {**sample.columns, "pass_rate": rate, "length_alpha": self.stage.alpha[edge], "difficulty_bucket": edge}
            out.append(dataclasses.replace(sample, columns=columns))
        return out

    def is_correct(self, scored: ScoredRollout) -> bool | None:
        """Whether a response is correct; None when the correctness reward skipped or is absent."""
        score = scored.breakdown.get(self.cfg.correctness)
        return None if score is None else score >= self.cfg.correct_threshold

    def filter_value(self, scored: ScoredRollout) -> float | None:
        """What dynamic sampling compares inside a group (`curriculum.filter_on`); None: left out."""
        return _FILTER_VALUES[self.cfg.filter_on](self, scored)

    def update(self, step: int, scored: list[ScoredRollout]) -> dict[str, float]:
        """Record one step's scored responses (every group generated, flat ones included).

        Updates pass rates, the rolling accuracy, and the stage; returns `curriculum/*` metrics
        describing the stage the step ran in. `curriculum/accuracy` is absent when no response
        had a correctness score. Raises ValueError for a step not after the last one recorded
        (a step's groups, kept and dropped, go in one call).
        """
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"curriculum.update: step {step} was already recorded (last step {self.last_step})")
        self.last_step = step
        stage, stage_index = self.stage, self.stage_index
        correct = counted = 0
        buckets = dict.fromkeys(stage.alpha, 0)
        rates: list[float] = []
        for group in split_groups(scored):
            verdicts = [v for v in (self.is_correct(s) for s in group) if v is not None]
            sample = group[0].rollout.sample
            if verdicts:
                correct += sum(verdicts)
                counted += len(verdicts)
                self.tracker.update(sample.id, sum(verdicts) / len(verdicts), sample.source)
            rate = self.tracker.rate(sample.id, sample.source)
            rates.append(rate)
            buckets[bucket_edge(rate, stage.alpha)] += 1

        self.steps_in_stage += 1
        self.window = [*self.window, (correct, counted)][-self.cfg.accuracy_window:]
        rolling = self.rolling_accuracy()
        steps_in_stage, window_steps = self.steps_in_stage, len(self.window)
        advanced = self._should_advance(rolling)
        if advanced:
            self.stage_index += 1
            self.steps_in_stage = 0
            self.window = []

        lengths = [len(s.rollout.response_ids) for s in scored]
        metrics: dict[str, float] = {
            "curriculum/stage": float(stage_index),
            "curriculum/steps_in_stage": float(steps_in_stage),
            "curriculum/rolling_accuracy": rolling,
            "curriculum/window_steps": float(window_steps),
            "curriculum/counted_responses": float(counted),
            # No correctness verdict (the plugin returned None, or its call failed or timed out):
            # neither right nor wrong, so out of pass rates, accuracy and stage advance.
            "curriculum/uncounted_responses": float(len(scored) - counted),
            "curriculum/pass_rate_mean": sum(rates) / len(rates) if rates else self.cfg.initial_pass_rate,
            "curriculum/tracked_prompts": float(len(self.tracker)),
            "curriculum/response_len_mean": sum(lengths) / len(lengths) if lengths else 0.0,
            "curriculum/max_response_tokens": float(stage.max_response_tokens or self.default_max_tokens),
            "curriculum/advanced": float(advanced),
            **{f"curriculum/bucket_{edge}": float(n) for edge, n in buckets.items()},
        }
        if counted:
            metrics["curriculum/accuracy"] = correct / counted
        return metrics

    def rolling_accuracy(self) -> float:
        """Correct / counted responses pooled over the window (0.0 when nothing was counted)."""
        counted = sum(n for _, n in self.window)
        return sum(c for c, _ in self.window) / counted if counted else 0.0

    def _should_advance(self, rolling: float) -> bool:
        if self.is_last_stage:
            return False
        stage = self.stage
        if stage.max_steps is not None and self.steps_in_stage >= stage.max_steps:
            return True
        window_full = len(self.window) >= self.cfg.accuracy_window
        return stage.advance_accuracy is not None and window_full and rolling >= stage.advance_accuracy

    # --- data mix ----------------------------------------------------------------------------

    def weights_for_mix(self) -> dict[str, float]:
        """Dataset -> weight of the current stage (`{train_source: 1.0}` without a data_mix)."""
        return self._mix_of(self.stage)

    def _mix_of(self, stage: StageConfig) -> dict[str, float]:
        mix = stage.data_mix
        return {self.train_source: 1.0} if mix is None else {k: w for k, w in mix.items() if w > 0}

    def choose_sources(self, n: int, rng: random.Random) -> list[str]:
        """The dataset to draw each of `n` prompts from: independent weighted draws from `rng`.

        Deterministic given the rng's state (seed it from run.seed and the step); a single source
        consumes no randomness.
        """
        weights = self.weights_for_mix()
        if len(weights) == 1:
            return [next(iter(weights))] * n
        return rng.choices(list(weights), weights=list(weights.values()), k=n)

    # --- checkpoint ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state: stage, steps in stage, accuracy window, pass rates."""
        return {
            "version": STATE_VERSION,
            "stage_index": self.stage_index,
            "stage_name": self.stage.name,
            "steps_in_stage": self.steps_in_stage,
            "last_step": self.last_step,
            "window": [[c, n] for c, n in self.window],
            "pass_rates": self.tracker.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; refuses a stage that the current stage list does not have.

        A version-1 state (pass rates by sample id alone) loads when the recipe draws from one data
        source, whose rates they then are; with several, ids of different sources may have been
        mixed into one rate, and it is refused."""
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"curriculum state version {version!r} is not {STATE_VERSION}")
        pass_rates = state["pass_rates"]
        if version == 1:
            sources = sorted({name for stage in self.stages for name in self._mix_of(stage)})
            if len(sources) != 1:
                raise ValueError(f"checkpoint's curriculum state (version 1) keys pass rates by sample id alone, and this "
                                 f"recipe draws from several data sources ({', '.join(sources)}) whose ids may repeat: "
                                 "its pass rates cannot be told apart; start a fresh run (checkpoint.resume=never)")
            pass_rates = {sources[0]: pass_rates}
        index, name = int(state["stage_index"]), str(state["stage_name"])
        if index >= len(self.stages) or self.stages[index].name != name:
            names = ", ".join(s.name for s in self.stages)
            raise ValueError(f"checkpoint is in curriculum stage {index} {name!r}, but the recipe's stages are: {names}")
        self.stage_index = index
        self.steps_in_stage = int(state["steps_in_stage"])
        self.last_step = None if state["last_step"] is None else int(state["last_step"])
        self.window = [(int(c), int(n)) for c, n in state["window"]][-self.cfg.accuracy_window:]
        self.tracker.load_state_dict(pass_rates)
