"""One reward worker: holds the instantiated plugins and runs plugin calls.

The pool runs this class as a Ray actor (a process of its own). Calls arrive one task at a time
and Ray runs a synchronous actor's tasks on the process's main thread, so sync plugins may use
`signal.alarm` (math-verify does). Async plugins run on the worker's own event loop, all calls of a
task concurrently, each under `asyncio.wait_for` whose clock starts when the call gets one of the
plugin's `max_concurrent_calls` slots (all calls at once when it sets none). A sync call is not interrupted here: the pool
kills the whole worker when a call overruns (Python cannot stop a hung thread, and a plugin stuck
in C code ignores signals); a sync call that returns late is still reported as timed out.

Imports stay light (no torch, ray or pydantic at module level) so a worker starts in about a second.
"""

from __future__ import annotations

import asyncio
import threading
import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ling_rl import run_logs
from ling_rl.reward.contract import (
    STARTUP_CHECK,
    InfrastructureError,
    RewardOutput,
    accepted_keywords,
    concurrent_call_slots,
    required_keywords,
)


@dataclass
class CallInput:
    """Arguments of one plugin call: aligned lists of one slice of the batch (or one group)."""

    prompts: list[Any]
    """Prompt texts, or per prompt its messages (conversational data, TRL-style plugin)."""
    completions: list[Any]
    """Response texts, or per response `[{"role": "assistant", "content": text}]` (same case)."""
    completion_ids: list[list[int]]
    columns: dict[str, list[Any]]


@dataclass
class CallResult:
    """Outcome of one plugin call. `scores` is None when the call failed or timed out."""

    scores: list[float | None] | None
    latency_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    """Why the call failed (exception, malformed result, dead worker); None on success and timeout."""
    timed_out: bool = False
    infrastructure: bool = False
    """The plugin raised `InfrastructureError` (its sandbox or browser failed): `error` says why; the
    pool skips the call's samples instead of scoring them `error_value`."""


class RewardWorker:
    """Plugins of one pool, instantiated in this process; `run` executes calls of one plugin."""

    def __init__(self, payload: bytes, driver_sys_path: list[str]) -> None:
        run_logs.to_role_log()  # this worker's output to its file in the run folder, when routed
        # The driver may have extended sys.path after Ray started (an entry point or package in a
        # temp folder): put its path first so the plugins unpickle to the same modules.
        sys.path[:] = list(driver_sys_path) + [p for p in sys.path if p not in driver_sys_path]
        from ray import cloudpickle  # ray is imported in any actor process anyway

        self.plugins = cloudpickle.loads(payload)
        self.start_error: str | None = None
        """Why a plugin could not start (one line), reported by `ready()`; None when all started."""
        self._callables: list[Any] = []
        for plugin in self.plugins:
            try:
                self._callables.append(_start(plugin))
            except Exception as e:
                # Reported as data, not raised: an exception in an actor's __init__ reaches the
                # driver as a multi-line Ray traceback, and the user needs one line.
                reason = " ".join(f"{type(e).__name__}: {e}".split())
                self.start_error = f"reward plugin {plugin.key!r} could not start: {reason}"
                return
        self._accepts = [accepted_keywords(fn) for fn in self._callables]
        self._requires = [required_keywords(fn) for fn in self._callables]
        # Async plugins run on a loop of their own thread: a sync plugin may leave an event loop
        # running on the main thread (playwright's sync API does), and run_until_complete there
        # would then fail. Sync plugins stay on the main thread (signal.alarm, as math-verify uses).
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="reward-async", daemon=True).start()

    def ready(self) -> str | None:
        """Returns once the plugins are instantiated and checked: None, or why one could not start."""
        return self.start_error

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, plugin_index: int, calls: list[CallInput]) -> list[CallResult]:
        plugin = self.plugins[plugin_index]
        if plugin.is_async:
            fn = self._callables[plugin_index]
            kwargs = [self._kwargs(plugin_index, c) for c in calls]
            slots = concurrent_call_slots(plugin.target)
            coro = _run_all_async(fn, kwargs, calls, plugin.timeout_s, slots)
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        return [self._run_sync(plugin_index, c) for c in calls]

    def _run_sync(self, index: int, call: CallInput) -> CallResult:
        timeout_s = self.plugins[index].timeout_s
        start = time.monotonic()
        try:
            out = self._callables[index](**self._kwargs(index, call))
            if inspect.isawaitable(out):  # a sync callable that hands back a coroutine
                out = asyncio.run_coroutine_threadsafe(asyncio.wait_for(_awaited(out), timeout_s), self._loop).result()
        except (asyncio.TimeoutError, TimeoutError):
            return CallResult(None, time.monotonic() - start, timed_out=True)
        except Exception as e:
            return _raised(e, time.monotonic() - start)
        latency = time.monotonic() - start
        if latency > timeout_s:
            return CallResult(None, latency, timed_out=True)
        return _checked(out, len(call.completions), latency)

    def _kwargs(self, index: int, call: CallInput) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompts": call.prompts,
            "completions": call.completions,
            "completion_ids": call.completion_ids,
            **call.columns,
        }
        plugin = self.plugins[index]
        if not plugin.is_class:
            kwargs.update(plugin.args)
        for name in self._requires[index] - kwargs.keys():  # a column no row of this call has
            kwargs[name] = [None] * len(call.completions)
        accepted = self._accepts[index]
        return kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}


def _start(plugin: Any) -> Any:
    """The plugin's callable: a class plugin is built with its `args` and, if it defines
    `startup_check()`, checked (e.g. that its judge endpoint answers)."""
    if not plugin.is_class:
        return plugin.target
    instance = plugin.target(**plugin.args)
    check = getattr(instance, STARTUP_CHECK, None)
    if callable(check):
        check()
    return instance


# The coroutines below are module functions on purpose: a single `async def` method would make
# Ray treat RewardWorker as an async actor and run every method, sync plugins included, on an
# event-loop thread instead of the main thread.


async def _run_all_async(
    fn: Any, kwargs: list[dict[str, Any]], calls: list[CallInput], timeout_s: float, slots: int | None
) -> list[CallResult]:
    slot = asyncio.Semaphore(slots or max(1, len(calls)))
    return list(await asyncio.gather(*(_run_async(fn, kw, len(c.completions), timeout_s, slot)
                                       for kw, c in zip(kwargs, calls))))


async def _run_async(fn: Any, kwargs: dict[str, Any], expected: int, timeout_s: float, slot: asyncio.Semaphore) -> CallResult:
    async with slot:  # the call's clock starts here, not while it waits for a slot
        return await _timed_call(fn, kwargs, expected, timeout_s)


async def _timed_call(fn: Any, kwargs: dict[str, Any], expected: int, timeout_s: float) -> CallResult:
    start = time.monotonic()
    try:
        out = await asyncio.wait_for(fn(**kwargs), timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        return CallResult(None, time.monotonic() - start, timed_out=True)
    except Exception as e:
        return _raised(e, time.monotonic() - start)
    return _checked(out, expected, time.monotonic() - start)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def task_timeout_s(plugin: Any, calls: int) -> float:
    """How long one task of `calls` calls of `plugin` (a `ResolvedPlugin`) may take in a worker: a
    sync task holds one call, so `timeout_s`; an async task runs its calls `max_concurrent_calls` at
    a time, each within `timeout_s` of getting its slot, so `ceil(calls / slots) * timeout_s`."""
    if not plugin.is_async:
        return plugin.timeout_s
    slots = concurrent_call_slots(plugin.target) or calls
    return -(-calls // max(1, slots)) * plugin.timeout_s


def _raised(error: Exception, latency: float) -> CallResult:
    """A call that raised: a failure, marked as an infrastructure one for `InfrastructureError`."""
    return CallResult(None, latency, error=f"{type(error).__name__}: {error}",
                      infrastructure=isinstance(error, InfrastructureError))


def _checked(out: Any, expected: int, latency: float) -> CallResult:
    """Validate a plugin's return value; a malformed one is a failure with a precise message."""
    metrics: dict[str, float] = {}
    if isinstance(out, RewardOutput):
        try:
            metrics = {str(k): float(v) for k, v in out.metrics.items()}
        except (TypeError, ValueError) as e:
            return CallResult(None, latency, error=f"RewardOutput.metrics must map names to numbers: {e}")
        out = out.scores
    if not isinstance(out, list | tuple):
        return CallResult(None, latency, error=f"returned {type(out).__name__}, expected a list of float | None")
    if len(out) != expected:
        return CallResult(None, latency, error=f"returned {len(out)} scores for {expected} completions")
    scores: list[float | None] = []
    for value in out:
        if value is None:
            scores.append(None)
            continue
        try:
            score = float(value)
        except (TypeError, ValueError):
            return CallResult(None, latency, error=f"returned a {type(value).__name__} score, expected float | None")
        if not math.isfinite(score):
            return CallResult(None, latency, error=f"returned a non-finite score ({score})")
        scores.append(score)
    return CallResult(scores, latency, metrics=metrics)
