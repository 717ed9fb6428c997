"""The `rewards:` section: which reward plugins score a response, with what weights."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ling_rl.schema import Section


class RewardSpec(Section):
    """One reward plugin."""

    name: str
    """Registered name (`math`), dotted path (`my_pkg.rewards:func`), file (`rewards.py:func`) or the
    name of a `ling_rl.rewards` entry point (resolution order: see `ling_rl.reward.loading`)."""

    alias: str | None = Field(default=None, min_length=1, pattern=r"^[^/]+$")
    """Name of this plugin in the score breakdown and metrics (`reward/<alias>/mean`) and in
    `curriculum.correctness`. Default: the function's name, the last part of `name`
    (`rewards/mine.py:score` and `my_pkg.rewards.score` give `score`, `math` gives `math`). Needed
    when two entries would share a name, e.g. one plugin listed twice with different `args` (an
    error otherwise, naming both entries). No `/`: it would nest W&B panels."""

    weight: float = 1.0
    """Weight of this plugin in the total reward."""

    required: bool | None = None
    """Whether a None from this plugin skips the sample (it is then not trained on, and counted in
    `reward/<plugin>/skipped_samples`). False: its None contributes nothing and the sample is
    trained on the other plugins' scores (e.g. plugins of a mixed recipe that each score only the
    rows of their own domain). Default (null): required when `weight` is not 0."""

    timeout_s: float = Field(default=30.0, gt=0)
    """A call taking longer counts as a timeout (see `error_value`)."""

    error_value: float | None = None
    """Score of a response whose call raised, timed out or returned a malformed result (counted in
    metrics). None (default): no score, the response is skipped (a plugin that could not judge a
    response has not found it wrong), and kept out of the curriculum's pass rates."""

    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the plugin: passed to `__init__` of a class plugin (once per worker),
    or on every call of a function plugin (like `functools.partial`)."""

    @property
    def is_required(self) -> bool:
        """`required`, or by default whether the plugin counts in the total (`weight != 0`)."""
        return self.required if self.required is not None else self.weight != 0

    @property
    def key(self) -> str:
        """The plugin's name in breakdowns and metrics: `alias`, else the function's name."""
        return self.alias or function_name(self.name)


def function_name(name: str) -> str:
    """The last part of a plugin `name`: the attribute after `:` (a file or dotted path with an
    attribute), else the part after the last `.` (a dotted path), else `name` itself (a registered
    name or an entry point)."""
    _, sep, attr = name.rpartition(":")
    return attr if sep else name.rpartition(".")[2]


def duplicate_keys(specs: list[RewardSpec]) -> str | None:
    """Why two `rewards:` entries cannot be told apart in breakdowns and metrics, or None."""
    first: dict[str, int] = {}
    for i, spec in enumerate(specs):
        j = first.setdefault(spec.key, i)
        if j != i:
            return (f"rewards.{j} (name {specs[j].name!r}) and rewards.{i} (name {spec.name!r}) both log as "
                    f"{spec.key!r} (reward/{spec.key}/...); give one of them a distinct `alias`")
    return None


class RewardSignalConfig(Section):
    """The `reward_signal:` section: when a run with no reward signal stops (`ling_rl.reward.signal`)."""

    max_failed_steps: int = Field(default=3, ge=0)
    """Stop the run, after saving a checkpoint, when this many consecutive steps had no reward
    signal: every call of a weighted plugin (`weight != 0`) failed or timed out, or every group of
    the step was flat (its responses that were not skipped all got the same total reward). The
    count starts again when a run resumes. 0: never stop for this."""
