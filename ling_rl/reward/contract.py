"""The reward plugin contract.

A reward plugin has the signature of a TRL reward function, so TRL functions work unchanged:

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

It is called with keyword arguments only:

- `prompts`, `completions`: aligned lists, one entry per scored response: strings, or, when the
  data is conversational (`data.chat_template: true`) and the plugin follows TRL's conventions,
  TRL's conversational form (see below);
- `completion_ids`: the response token ids (list of lists), as TRL passes them;
- `environments` (agentic episodes, `environment:`): per response, an `EnvironmentView` whose
  `get_reward()` returns what the episode's environment returned (TRL passes the instances);
- every dataset column of the samples (e.g. `answer`), as a list aligned with `prompts`
  (a row without the column gives None; a plugin that names a column without a default gets a
  list of None even when no row of the call has it);
- for function plugins, the recipe's `args` (class plugins receive `args` in `__init__` instead).

Keywords the plugin's signature does not accept are not passed (unless it takes `**kwargs`), so
`def f(completions, answer)` is a valid plugin.

It returns one score per completion: a float, or None when it cannot score that completion. What a
None does depends on the recipe's `required` for the plugin (default: required when `weight != 0`):
a None from a required plugin skips the sample (not trained on; counted per plugin as
`reward/<plugin>/skipped_samples`); a None from a plugin that is not required contributes nothing
to the total; a sample no plugin scored is skipped. It may instead return
`RewardOutput(scores, metrics)` to report its own metrics (averaged over its calls of a step).
A plugin that raises or times out leaves its call's responses unscored and skipped (counted as
`failures` / `timeouts`; a call over several responses is first run again one response per call),
unless the recipe gives the plugin a numeric `error_value`; with `InfrastructureError` (its sandbox
or browser failed, not the response) they are always skipped, and the step counts as one without
reward signal.

Variants: an `async def` function (calls run concurrently inside a worker), a class (instantiated
once per worker with `args`, then called like a function; `__call__` may be async; an optional
`startup_check(self) -> None` method is called once after `__init__` in each worker, and an
exception from `__init__` or from it stops the run before the first step with one line naming the
plugin, e.g. a judge plugin whose endpoint does not answer), and
group-level plugins (registered with `group_level=True`: called once per prompt with all of its
responses, e.g. for group-aware rewards). See `ling_rl.reward.registry.reward`.

Conversational data. With `data.chat_template: true` every prompt is a conversation rendered by
the tokenizer's chat template, and, as TRL's `GRPOTrainer` does for a conversational dataset, a
plugin written as a TRL reward function gets:

- `prompts`: per response, the prompt's messages, `[{"role": "system", ...}, {"role": "user", "content": ...}]`
  (the system message only with `data.system_prompt`);
- `completions`: per response, `[{"role": "assistant", "content": <response text>}]`.

So TRL's built-in rewards (`trl.rewards:think_format_reward`, `trl.rewards:accuracy_reward`, which
read `completion[0]["content"]`) and the user's own TRL reward functions work unchanged. A plugin
marked with ling-rl's `@reward` decorator (every built-in plugin of the `rewards` package) is
written for ling-rl and always gets strings: the rendered prompt and the response text
(`takes_conversations`). Without a chat template every plugin gets strings, as in TRL.

This module is imported by the reward workers: it must stay free of torch, ray and pydantic.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RewardFn = Callable[..., "list[float | None] | RewardOutput"]
"""A reward plugin callable (sync or async), see the module docstring."""

INPUT_KEYWORDS = ("prompts", "completions", "completion_ids", "environments")
"""Keywords the pool passes (`environments` with agentic episodes only); dataset columns and
`args` may not reuse them."""


@dataclass(frozen=True)
class EnvironmentView:
    """What a TRL reward function that takes `environments` gets per episode, e.g. TRL's
    `def reward(completions, environments, **kwargs): return [e.get_reward() for e in environments]`.
    TRL passes the live environment instances; ling-rl's live in each episode's own process, which
    has ended by the time rewards are computed, so this holds what `get_reward()` returned there
    (None: the environment has no `get_reward`, or the episode failed)."""

    reward: float | None

    def get_reward(self) -> float | None:
        return self.reward


@dataclass
class RewardOutput:
    """What a plugin may return instead of a plain list: scores plus its own metrics."""

    scores: list[float | None]
    """One score per completion (None: cannot score it; see the module docstring)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Plugin-defined metrics, e.g. `{"parse_failures": 3}`; logged as `reward/<plugin>/<key>`."""


class InfrastructureError(RuntimeError):
    """Raised by a plugin when what it scores with failed, not the response: a sandbox that could
    not start, a browser that could not launch. The pool does not score the call's responses (no
    `error_value`: a broken sandbox is not a wrong answer); it skips their samples, counts the call
    under the plugin's `failures` and `infra_failures`, and a step with such a failure counts as a
    step without reward signal, so the run stops when it repeats (`reward_signal.max_failed_steps`)."""


@dataclass(frozen=True)
class PluginInfo:
    """What the `@reward` decorator records on a plugin (attribute `__ling_reward__`)."""

    name: str | None
    group_level: bool = False


PLUGIN_INFO_ATTR = "__ling_reward__"

STARTUP_CHECK = "startup_check"
"""Name of a class plugin's optional check method, called once per worker after `__init__`."""


def plugin_info(obj: object) -> PluginInfo:
    """The decorator's record of `obj`, or the defaults for an undecorated (e.g. TRL) function."""
    info = getattr(obj, PLUGIN_INFO_ATTR, None)
    return info if isinstance(info, PluginInfo) else PluginInfo(name=None)


def takes_conversations(obj: object) -> bool:
    """Whether a plugin gets TRL's conversational form when the data is conversational: True for a
    plugin that follows TRL's conventions (any callable not marked with `@reward`, e.g. TRL's own
    reward functions), False for one marked with `@reward` (written for ling-rl: strings always)."""
    return not hasattr(obj, PLUGIN_INFO_ATTR)


def accepted_keywords(fn: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names `fn` accepts, or None when it takes `**kwargs` (then everything is passed)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def required_keywords(fn: Callable[..., Any]) -> frozenset[str]:
    """Keyword names `fn` needs (no default). A dataset column that no row of a batch has is still
    passed to a plugin that names it, as a list of None ("a row without the column gives None"),
    so a plugin such as `def f(completions, answer)` never fails on a batch drawn from one source
    that lacks the column."""
    return frozenset(
        p.name for p in inspect.signature(fn).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.default is inspect.Parameter.empty
    )


MAX_CONCURRENT_CALLS = "max_concurrent_calls"
"""Optional attribute of an async plugin (the function, or the class): how many of its calls a
worker runs at once. Each call's `timeout_s` counts from when it gets one of these slots, so calls
waiting for a slot do not spend their time. A plugin whose calls share a bottleneck (a judge client
with a concurrency limit) sets it, so that `timeout_s` bounds one call's own work rather than the
queue of every call before it. Unset: all calls of a task start at once."""


def concurrent_call_slots(target: object) -> int | None:
    """The `max_concurrent_calls` of a plugin's function or class, or None when unset.

    >>> async def judge(completions): ...
    >>> judge.max_concurrent_calls = 2
    >>> concurrent_call_slots(judge), concurrent_call_slots(len)
    (2, None)
    """
    slots = getattr(target, MAX_CONCURRENT_CALLS, None)
    if slots is None:
        return None
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise ValueError(f"reward plugin {getattr(target, '__qualname__', target)!r}: {MAX_CONCURRENT_CALLS} "
                         f"must be an int >= 1, got {slots!r}")
    return slots


def worker_cpus() -> int:
    """CPUs a plugin may keep busy at once in this process: in a Ray actor (a reward worker), the
    CPUs Ray assigned it (`cluster.reward.num_cpus`), rounded down, at least 1; outside Ray (a
    script, a test calling a plugin directly), `os.cpu_count()`. Several reward workers share a
    node, so sizing by the node's core count would oversubscribe it."""
    ray = sys.modules.get("ray")  # a reward worker has imported Ray; a plain script need not load it
    if ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if assigned is not None:  # None in a task or actor started with no CPUs
            return max(1, int(assigned))
    return os.cpu_count() or 1


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for `async def` functions, partials of them and objects with an async `__call__`."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method itself, not callable()
    return call is not None and inspect.iscoroutinefunction(call)
