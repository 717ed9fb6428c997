"""Turning the recipe's `rewards:` list into plugin objects, up front.

`resolve_rewards(specs)` is called by `ling-rl check` and by the driver before anything starts,
so a misspelled plugin, a missing file or a bad `args` key fails before the run. `spec.name` is
tried, in order, as:

1. a registered name (`exact_answer`; the built-in `rewards` package is imported first),
2. a `ling_rl.rewards` entry point of an installed distribution,
3. a file path with an attribute, `path/to/file.py:func` (relative to the working directory),
4. a dotted path, `pkg.module:func` or `pkg.module.func`.

Files and dotted paths are loaded by ling_rl/plugins.py, as tools and environments are.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ling_rl.plugins import NoSuchModule, PluginLoadError, getattr_path, load_file, load_object
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.contract import (INPUT_KEYWORDS, accepted_keywords, is_async_callable, plugin_info,
                                     takes_conversations)
from ling_rl.reward.registry import REWARDS, load_builtins

ENTRY_POINT_GROUP = "ling_rl.rewards"


class RewardResolutionError(ValueError):
    """A `rewards:` entry that cannot be used; the message names the plugin and what is available."""


@dataclass(frozen=True)
class ResolvedPlugin:
    """One `rewards:` entry resolved to its callable, with the settings the pool needs.

    Plain data (no pydantic) because it is shipped to the reward workers.
    """

    key: str
    """Name in breakdowns and metrics (`RewardSpec.key`)."""
    target: Any
    """The function, or the class to instantiate with `args` in each worker."""
    source: str
    """How it was found: `registered`, `entry point`, `file` or `dotted path`."""
    args: dict[str, Any]
    weight: float
    required: bool
    """A None from it skips the sample (`RewardSpec.is_required`)."""
    timeout_s: float
    error_value: float | None
    is_class: bool
    is_async: bool
    group_level: bool
    conversational: bool
    """Takes prompts and completions as lists of messages when the data is conversational, as TRL
    passes them (`ling_rl.reward.contract.takes_conversations`)."""


def resolve_rewards(specs: Sequence[RewardSpec]) -> list[ResolvedPlugin]:
    """Resolve and check every spec; raise `RewardResolutionError` on the first unusable one."""
    plugins = [resolve_reward(spec) for spec in specs]
    seen: set[str] = set()
    for plugin in plugins:
        if plugin.key in seen:
            raise RewardResolutionError(
                f"reward plugin {plugin.key!r} is listed twice; give the entries distinct `alias`es"
            )
        seen.add(plugin.key)
    return plugins


def resolve_reward(spec: RewardSpec) -> ResolvedPlugin:
    target, source = find_plugin(spec.name)
    is_class = inspect.isclass(target)
    if not callable(target):
        raise RewardResolutionError(f"reward plugin {spec.name!r} ({source}) is a {type(target).__name__}, not callable")
    _check_args(spec, target, is_class)
    return ResolvedPlugin(
        key=spec.key,
        target=target,
        source=source,
        args=dict(spec.args),
        weight=spec.weight,
        required=spec.is_required,
        timeout_s=spec.timeout_s,
        error_value=spec.error_value,
        is_class=is_class,
        is_async=is_async_callable(target.__call__ if is_class else target),
        group_level=plugin_info(target).group_level,
        conversational=takes_conversations(target),
    )


def find_plugin(name: str) -> tuple[Any, str]:
    """The object `name` refers to and how it was found (see the module docstring for the order)."""
    load_builtins()
    if name in REWARDS:
        return REWARDS.get(name), "registered"
    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    if name in entry_points.names:
        try:
            return entry_points[name].load(), "entry point"
        except Exception as e:
            raise RewardResolutionError(
                f"reward plugin {name!r}: loading entry point {entry_points[name].value!r} failed: {e!r}"
            ) from e
    what = f"reward plugin {name!r}"
    path, sep, attr = name.rpartition(":")
    try:
        if sep and path.endswith(".py"):
            module = load_file(Path(path), what)
            # Workers cannot import this synthetic module by name: ship its functions by value instead.
            from ray import cloudpickle

            cloudpickle.register_pickle_by_value(module)
            return getattr_path(module, attr, what), "file"
        if sep or "." in name:
            return load_object(name, what)
    except NoSuchModule as e:
        raise RewardResolutionError(f"{e}. " + _unknown_message(name, sorted(entry_points.names))) from None
    except PluginLoadError as e:
        raise RewardResolutionError(str(e)) from e.__cause__
    raise RewardResolutionError(_unknown_message(name, sorted(entry_points.names)))


def _unknown_message(name: str, entry_point_names: list[str]) -> str:
    return (
        f"unknown reward plugin {name!r}; registered: {', '.join(REWARDS.names()) or '(none)'}; "
        f"entry points ({ENTRY_POINT_GROUP}): {', '.join(entry_point_names) or '(none)'}; "
        "or give a dotted path `pkg.module:func` or a file `path/to/file.py:func`"
    )


def _check_args(spec: RewardSpec, target: Callable[..., Any], is_class: bool) -> None:
    """Catch misspelled `args` before the run: they must fit `__init__` or the function signature."""
    reserved = sorted(set(spec.args) & set(INPUT_KEYWORDS))
    if reserved:
        raise RewardResolutionError(f"reward plugin {spec.key!r}: args may not be named {', '.join(reserved)}")
    if is_class:
        try:
            inspect.signature(target).bind(**spec.args)
        except TypeError as e:
            raise RewardResolutionError(f"reward plugin {spec.key!r}: args {spec.args} do not fit {target.__name__}(): {e}") from None
        return
    accepted = accepted_keywords(target)
    unknown = sorted(set(spec.args) - accepted) if accepted is not None else []
    if unknown:
        raise RewardResolutionError(
            f"reward plugin {spec.key!r}: args {', '.join(unknown)} are not parameters of "
            f"{getattr(target, '__name__', target)}{inspect.signature(target)}"
        )
