"""The `rewards:` section: which reward plugins score a response, with what weights."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ling_rl.schema import Section


class RewardSpec(Section):
    """One reward plugin."""

    name: str
    """Registered name (`math`), dotted path (`my_pkg.rewards:func`) or file (`rewards.py:func`)."""

    weight: float = 1.0
    """Weight of this plugin in the total reward."""

    timeout_s: float = Field(default=30.0, gt=0)
    """A call taking longer counts as a failure and scores `error_value`."""

    error_value: float = 0.0
    """Score given when the plugin raises or times out (counted in metrics)."""

    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the plugin."""
