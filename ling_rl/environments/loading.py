"""The recipe's `environment:` names -> tool functions, an environment class and JSON schemas.

`resolve_environment` runs in the driver before anything starts and checks everything a run would
trip on later, each failure one line naming the recipe key (`EnvironmentSetupError`). It returns
plain data (`ResolvedEnvironment`: names and schemas, no objects); each episode's own process
calls `build_tools` to load the same names again and get callables.

A tool name is tried, in order, as a built-in (`TOOLS`: `calculator`, `python`), then as a file
`path/to/file.py:func` (relative to the working directory) or a dotted path `pkg.module:func`
(ling_rl/plugins.py), the order reward plugins use. The contract is TRL's: a tool is a typed
function with a Google-style docstring (`transformers.utils.get_json_schema` makes its schema);
an environment factory is a class or callable taking no arguments, whose instance has `reset`, and
whose public methods (functions of its class, not `reset`, not `get_reward`, not `_private`) are
tools; an optional `get_reward()` is a reward source.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ling_rl.environments.builtin import TOOLS
from ling_rl.environments.config import EnvironmentConfig
from ling_rl.environments.spec import EnvironmentSetupError, ResolvedEnvironment
from ling_rl.plugins import PluginLoadError, is_path_name, load_object

__all__ = ["EnvironmentSetupError", "build_tools", "resolve_environment", "TOOLS"]

_NOT_TOOLS = ("reset", "get_reward")


def resolve_environment(cfg: EnvironmentConfig, workdir: str | None = None) -> ResolvedEnvironment:
    """Load and check every tool and the factory (instantiated once, as TRL does); `workdir`:
    where relative file names are (default: the current directory)."""
    workdir = os.path.abspath(workdir or os.getcwd())
    names: list[str] = []
    schemas: list[dict[str, Any]] = []
    owners: dict[str, str] = {}
    for i, ref in enumerate(cfg.tools):
        what = f"environment.tools[{i}] {ref!r}"
        schema = tool_schema(load_tool(ref, what, workdir), what)
        _add(schema, what, names, schemas, owners)
    env_name, has_reward = None, False
    if cfg.factory is not None:
        what = f"environment.factory {cfg.factory!r}"
        instance = _probe_instance(load_factory(cfg.factory, what, workdir), what, cfg.timeout_s)
        cls = type(instance)
        env_name = cls.__name__
        if not callable(getattr(instance, "reset", None)):
            raise EnvironmentSetupError(f"{what}: its instance ({env_name}) has no `reset` method; an environment "
                                        "needs `reset(**row)`, returning None or a string appended to the prompt")
        has_reward = hasattr(instance, "get_reward")
        if has_reward and not callable(instance.get_reward):
            raise EnvironmentSetupError(f"{what}: {env_name}.get_reward is a {type(instance.get_reward).__name__}, "
                                        "not callable; it must be a method `get_reward() -> float`")
        for name in environment_tool_names(cls):
            method_what = f"{what}: method {env_name}.{name}"
            _add(tool_schema(getattr(cls, name), method_what), method_what, names, schemas, owners)
    if not names:
        raise EnvironmentSetupError(f"environment.factory {cfg.factory!r}: {env_name} has no public methods, so the "
                                    "model has no tools; define methods (not starting with `_`) besides reset and get_reward")
    return ResolvedEnvironment(tool_refs=tuple(cfg.tools), factory_ref=cfg.factory, tool_names=tuple(names),
                               schemas=tuple(schemas), env_name=env_name, has_reward=has_reward, workdir=workdir)


def build_tools(env: ResolvedEnvironment) -> tuple[object | None, dict[str, Callable[..., Any]]]:
    """In an episode's own process: the environment instance (the factory called; None without
    one) and name -> callable for every tool in `env.tool_names` order, the environment's as bound
    methods of that instance."""
    functions = [load_tool(ref, f"environment.tools[{i}] {ref!r}", env.workdir) for i, ref in enumerate(env.tool_refs)]
    tools: dict[str, Callable[..., Any]] = dict(zip(env.tool_names, functions))
    instance = None
    if env.factory_ref is not None:
        instance = load_factory(env.factory_ref, f"environment.factory {env.factory_ref!r}", env.workdir)()
        for name in env.tool_names[len(functions):]:
            tools[name] = getattr(instance, name)
    return instance, tools


def load_tool(ref: str, what: str, workdir: str) -> Callable[..., Any]:
    """The function `ref` names (a built-in, a file or a dotted path)."""
    if ref in TOOLS:
        return TOOLS.get(ref)
    obj = _load(ref, what, workdir, f"unknown built-in tool; built-in: {', '.join(TOOLS.names())}")
    if inspect.isclass(obj):
        raise EnvironmentSetupError(f"{what}: is a class; a tool is a function (an environment class goes in "
                                    "environment.factory)")
    if not callable(obj):
        raise EnvironmentSetupError(f"{what}: is a {type(obj).__name__}, not callable")
    return obj


def load_factory(ref: str, what: str, workdir: str) -> Callable[[], Any]:
    obj = _load(ref, what, workdir, "an environment factory is a class or callable")
    if not callable(obj):
        raise EnvironmentSetupError(f"{what}: is a {type(obj).__name__}, not a class or callable")
    return obj


def _load(ref: str, what: str, workdir: str, unknown: str) -> Any:
    if not is_path_name(ref):
        raise EnvironmentSetupError(f"{what}: {unknown}; or give a file `path/to/file.py:name` or a dotted "
                                    "path `pkg.module:name`")
    path, sep, attr = ref.rpartition(":")
    if sep and path.endswith(".py") and not os.path.isabs(path):
        ref = f"{Path(workdir) / path}:{attr}"  # relative to the recipe's working directory
    try:
        return load_object(ref, what)[0]
    except PluginLoadError as e:
        raise EnvironmentSetupError(str(e)) from e.__cause__


def tool_schema(fn: Callable[..., Any], what: str) -> dict[str, Any]:
    """TRL's schema of a tool (`get_json_schema`), or a one-line error saying what it lacks."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as e:  # DocstringParsingException, TypeHintParsingException, or a signature it cannot read
        raise EnvironmentSetupError(f"{what}: no JSON schema ({_one_line(e)}); a tool needs a type hint on every "
                                    "argument and a Google-style docstring with a description and an `Args:` "
                                    "line per argument") from None


def environment_tool_names(cls: type) -> list[str]:
    """The tools of an environment class, as TRL finds them: functions of the class (not of an
    instance, so properties are not evaluated) except `reset`, `get_reward` and `_private` ones."""
    return [name for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
            if name not in _NOT_TOOLS and not name.startswith("_")]


def _add(schema: dict[str, Any], what: str, names: list[str], schemas: list[dict[str, Any]], owners: dict[str, str]) -> None:
    name = schema["function"]["name"]
    if name in owners:
        raise EnvironmentSetupError(f"{what}: tool name {name!r} is already {owners[name]}; tool names must be unique")
    owners[name] = what
    names.append(name)
    schemas.append(schema)


def _probe_instance(factory: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """One instance, made here as TRL does (to find its tools); bounded by `environment.timeout_s`.
    A daemon thread, so a factory that never returns cannot hold the process at exit."""
    outcome: dict[str, Any] = {}

    def make() -> None:
        try:
            outcome["instance"] = factory()
        except BaseException as e:  # reported below, in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=make, name="environment-factory-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise EnvironmentSetupError(f"{what}: calling it with no arguments did not return within "
                                    f"environment.timeout_s={timeout_s:g} s")
    if "error" in outcome:
        raise EnvironmentSetupError(f"{what}: calling it with no arguments failed: {_one_line(outcome['error'])}; "
                                    "an environment factory is called with no arguments, once per episode")
    return outcome["instance"]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text
