"""`environment_reward`: the score an episode's environment gave itself (`get_reward()`), so that an
environment that owns its reward (TRL's `environment_factory` with `get_reward`) is one more reward
source. The driver adds it when the environment defines `get_reward` (named after the environment
class, weight `environment.reward_weight`); it is not meant to be listed in a recipe."""

from __future__ import annotations

from typing import Any

from ling_rl.reward.registry import reward


@reward("environment_reward")
def environment_reward(completions: list[Any], __environment_reward__: list[float | None] | None = None,
                       **kwargs: Any) -> list[float | None]:
    """Each episode's `get_reward()` (None: the environment failed, or the response is not an episode).

    >>> environment_reward(completions=["a", "b"], __environment_reward__=[1.0, None])
    [1.0, None]
    """
    # The parameter's name is the column's (ling_rl.environments.spec.ENV_REWARD_COLUMN, a test checks):
    # reward workers pass columns by name.
    values = __environment_reward__ or [None] * len(completions)
    return [None if v is None else float(v) for v in values]
