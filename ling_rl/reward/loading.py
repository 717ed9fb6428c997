"""Turning the recipe's `rewards:` list into plugin objects, up front.

`resolve_rewards(specs)` is called by `ling-rl check` and by the driver before anything starts,
so a misspelled plugin, a missing file or a bad `args` key fails before the run. `spec.name` is
tried, in order, as:

1. a registered name (`exact_answer`; the built-in `rewards` package is imported first),
2. a `ling_rl.rewards` entry point of an installed distribution,
3. a file path with an attribute, `path/to/file.py:func` (relative to the working directory),
4. a dotted path, `pkg.module:func` or `pkg.module.func`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

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
    path, sep, attr = name.rpartition(":")
    if sep and path.endswith(".py"):
        return _getattr_path(_load_file(name, Path(path)), attr, name), "file"
    if sep or "." in name:
        module_name, attr = (path, attr) if sep else name.rsplit(".", 1)
        return _getattr_path(_import(name, module_name), attr, name), "dotted path"
    raise RewardResolutionError(_unknown_message(name, sorted(entry_points.names)))


def _unknown_message(name: str, entry_point_names: list[str]) -> str:
    return (
        f"unknown reward plugin {name!r}; registered: {', '.join(REWARDS.names()) or '(none)'}; "
        f"entry points ({ENTRY_POINT_GROUP}): {', '.join(entry_point_names) or '(none)'}; "
        "or give a dotted path `pkg.module:func` or a file `path/to/file.py:func`"
    )


def _import(name: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            entry_points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP).names)
            raise RewardResolutionError(
                f"reward plugin {name!r}: no module {module_name!r}. " + _unknown_message(name, entry_points)
            ) from None
        raise RewardResolutionError(f"reward plugin {name!r}: importing {module_name} failed: {e}") from e
    except Exception as e:
        raise RewardResolutionError(f"reward plugin {name!r}: importing {module_name} failed: {e!r}") from e


def _load_file(name: str, path: Path) -> ModuleType:
    path = path.resolve()
    if not path.is_file():
        raise RewardResolutionError(f"reward plugin {name!r}: file {str(path)!r} not found")
    # A stable, collision-free module name per file, so resolving twice reuses the module.
    module_name = f"_ling_rl_reward_file_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None  # always set for a .py file
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise RewardResolutionError(f"reward plugin {name!r}: executing {path} failed: {e!r}") from e
    # Workers cannot import this synthetic module by name: ship its functions by value instead.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module


def _getattr_path(module: ModuleType, attr: str, name: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise RewardResolutionError(
                f"reward plugin {name!r}: {module.__name__} has no attribute {attr!r}; callables there: "
                f"{', '.join(public) or '(none)'}"
            )
        obj = getattr(obj, part)
    return obj


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
