"""Plugins registered with the decorator, one per contract variant exercised by the tests."""

import asyncio
import os
import time

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward


@reward("t_length")
def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


@reward("t_async_length")
async def async_length(prompts, completions, **columns):
    await asyncio.sleep(0.01)
    return [float(len(c)) for c in completions]


@reward("t_concurrent", group_level=True)
async def concurrent(prompts, completions, **columns):
    """Sleeps 0.5 s per group: many groups finish in ~0.5 s only if calls overlap."""
    await asyncio.sleep(0.5)
    return [1.0] * len(completions)


@reward("t_contains")
class Contains:
    """A class plugin: built once per worker with the recipe's args."""

    def __init__(self, needle: str, score: float = 1.0) -> None:
        self.needle = needle
        self.score = score
        self.pid = os.getpid()

    def __call__(self, prompts, completions, **columns):
        return [self.score if self.needle in c else 0.0 for c in completions]


@reward("t_longest_in_group", group_level=True)
def longest_in_group(prompts, completions, **columns):
    """Group-level: 1.0 for the longest response of the prompt's group; asserts it sees one group."""
    assert len(set(prompts)) == 1, f"group-level call saw {len(set(prompts))} prompts"
    longest = max(len(c) for c in completions)
    return [1.0 if len(c) == longest else 0.0 for c in completions]


@reward("t_scaled")
def scaled(prompts, completions, factor, **columns):
    """A function plugin with an `args` entry (`factor`)."""
    return [factor * len(c) for c in completions]


@reward("t_strict")
def strict(completions, answer):
    """No **kwargs: the pool passes only the keywords this signature names."""
    return [float(c == a) for c, a in zip(completions, answer)]


@reward("t_skip_odd")
def skip_odd(prompts, completions, **columns):
    return [None if len(c) % 2 else 1.0 for c in completions]


@reward("t_skip_all")
def skip_all(prompts, completions, **columns):
    return [None] * len(completions)


@reward("t_with_metrics")
def with_metrics(prompts, completions, **columns):
    return RewardOutput(scores=[1.0] * len(completions), metrics={"batch_size": len(completions)})


@reward("t_raises")
def raises(prompts, completions, **columns):
    raise ValueError("plugin exploded on purpose")


@reward("t_wrong_length")
def wrong_length(prompts, completions, **columns):
    return [1.0]


@reward("t_hangs")
def hangs(prompts, completions, **columns):
    time.sleep(3600)


@reward("t_judge")
def judge(prompts, completions, **columns):
    """A correctness plugin a response can break: 1.0 for "right", 0.0 otherwise; it hangs on a
    response containing "hang" and raises on one containing "boom" (e.g. output that makes a
    verifier loop or crash)."""
    if any("hang" in c for c in completions):
        time.sleep(3600)
    if any("boom" in c for c in completions):
        raise ValueError("verifier crashed on this output")
    return [1.0 if c == "right" else 0.0 for c in completions]


@reward("t_async_hangs")
async def async_hangs(prompts, completions, **columns):
    await asyncio.sleep(3600)


@reward("t_bad_init")
class BadInit:
    def __init__(self) -> None:
        raise RuntimeError("cannot load the judge")

    def __call__(self, prompts, completions, **columns):
        return [0.0] * len(completions)


@reward("t_signal_alarm")
def signal_alarm(prompts, completions, **columns):
    """Uses signal.alarm as math-verify does; that only works on the process's main thread."""
    import signal

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.alarm(60)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
    return [1.0] * len(completions)


@reward("t_sandbox_cannot_start")
def sandbox_cannot_start(prompts, completions, **columns):
    """Runs each completion in a real sandbox given a 1 MB address space: the sandbox's own tools
    cannot load, so it never starts (an infrastructure failure, never the completion's fault)."""
    from rewards.sandbox import SandboxLimits, run_python

    return [float(run_python({"main.py": c}, SandboxLimits(memory_mb=1)).returncode == 0) for c in completions]
