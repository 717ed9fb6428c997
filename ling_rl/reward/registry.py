"""The registry of reward plugins and the `@reward` decorator.

    from ling_rl.reward.registry import reward

    @reward("has_answer_tag")
    def has_answer_tag(prompts, completions, **columns):
        return [1.0 if "<answer>" in c else 0.0 for c in completions]

    @reward("group_rank", group_level=True)        # called once per prompt with all its responses
    def group_rank(prompts, completions, **columns): ...

A recipe then uses `rewards: [{name: has_answer_tag}]`, provided the defining module is imported
(the built-ins in the top-level `rewards` package are; other packages expose their plugins through
the `ling_rl.rewards` entry-point group, or the recipe names them by dotted or file path).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from ling_rl.registry import Registry
from ling_rl.reward.contract import PLUGIN_INFO_ATTR, PluginInfo

# Values are functions or classes following `ling_rl.reward.contract`.
REWARDS: Registry[Any] = Registry("reward plugin")

F = TypeVar("F", bound=Callable[..., Any])

BUILTIN_PACKAGE = "rewards"


def reward(name: str | None = None, *, group_level: bool = False) -> Callable[[F], F]:
    """Mark a function or class as a reward plugin and, given a `name`, register it.

    `group_level=True`: the plugin is called once per group (one prompt's responses) instead of
    on arbitrary slices of the batch. Without a name the object is only marked (useful for a
    group-level plugin referenced by dotted path or file path).
    """

    def decorator(obj: F) -> F:
        setattr(obj, PLUGIN_INFO_ATTR, PluginInfo(name=name, group_level=group_level))
        if name is not None and not (name in REWARDS and _same_definition(REWARDS.get(name), obj)):
            REWARDS.add(name, obj)  # a different plugin under a taken name is an error
        return obj

    return decorator


def _same_definition(a: Any, b: Any) -> bool:
    """Whether `b` is `a` defined again by executing the same file once more.

    One file can run twice in a process: named by file path in one recipe entry and by dotted
    path in another, or re-imported by a test runner. That is not a name clash.
    """
    try:
        same_file = inspect.getsourcefile(a) == inspect.getsourcefile(b) is not None
    except TypeError:  # builtins and C callables have no source file
        return a is b
    return same_file and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)


def load_builtins() -> None:
    """Import the built-in plugins so they register themselves (idempotent: imports are cached)."""
    importlib.import_module(BUILTIN_PACKAGE)
