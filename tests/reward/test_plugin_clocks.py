"""Plugin clocks and CPU shares (issue 23 item 7).

- An async plugin's call waited for the plugin's own bottleneck (a judge client's concurrency limit)
  on the same clock as its work: every call of a task started its `timeout_s` at once, so calls
  queued behind the others timed out. Now each call's clock starts when it gets one of the plugin's
  `max_concurrent_calls` slots, and the pool's deadline for the task allows for the queue.
- `code` ran `os.cpu_count()` sandboxes per call in every reward worker; now the CPUs Ray assigned
  the worker (`cluster.reward.num_cpus`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
import ray
from ray import cloudpickle

from ling_rl.reward.config import RewardSpec
from ling_rl.reward.contract import concurrent_call_slots, worker_cpus
from ling_rl.reward.loading import resolve_rewards
from ling_rl.reward.pool import RewardPool
from ling_rl.reward.registry import reward
from ling_rl.reward.worker import CallInput, RewardWorker
from tests.reward.conftest import make_rollouts

JUDGE_S = 0.3
"""Each call holds the (one-slot) judge this long; 6 calls in a row take 1.8 s, over a 1 s timeout."""

_judge: dict[int, asyncio.Semaphore] = {}


@reward("t_queued_judge", group_level=True)
async def queued_judge(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """Like a judge plugin: all calls share one judge that answers one request at a time."""
    judge = _judge.setdefault(id(asyncio.get_running_loop()), asyncio.Semaphore(1))
    async with judge:
        await asyncio.sleep(JUDGE_S)
    return [1.0] * len(completions)


queued_judge.max_concurrent_calls = 1  # type: ignore[attr-defined]


def _calls(n: int) -> list[CallInput]:
    return [CallInput(prompts=["p"], completions=["c"], completion_ids=[[1]], columns={}) for _ in range(n)]


def test_each_async_call_times_from_its_slot() -> None:
    plugins = resolve_rewards([RewardSpec(name="t_queued_judge", timeout_s=1.0)])
    worker = RewardWorker(cloudpickle.dumps(plugins), list(sys.path))
    assert worker.ready() is None
    results = worker.run(0, _calls(6))
    assert [r.timed_out for r in results] == [False] * 6, [r.latency_s for r in results]
    assert all(r.scores == [1.0] for r in results)
    assert max(r.latency_s for r in results) < 1.0  # each call's own time, not the queue's


def test_slots_attribute_is_checked() -> None:
    async def bad(completions: list[str]) -> list[float]:
        return [0.0] * len(completions)

    bad.max_concurrent_calls = 0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_concurrent_calls must be an int >= 1"):
        concurrent_call_slots(bad)


def test_pool_waits_for_queued_async_calls(ray_session: None) -> None:
    """6 groups on one worker: the pool's deadline covers the queue (6 x 0.3 s > timeout_s 1 s)."""
    rollouts = make_rollouts([(f"q{g}", "1", ["a", "b"]) for g in range(6)])
    with RewardPool([RewardSpec(name="t_queued_judge", timeout_s=1.0)], num_workers=1, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(rollouts)
    assert metrics.plugins["t_queued_judge"].timeouts == 0 and metrics.workers_replaced == 0
    assert [s.reward for s in scored] == [1.0] * 12


@ray.remote(num_cpus=1)
def _code_sandboxes() -> tuple[int, int]:
    from rewards.code import Code

    return Code(timeout_s=5).max_parallel, worker_cpus()


def test_code_sandboxes_follow_the_worker_cpus(ray_session: None) -> None:
    assert (os.cpu_count() or 1) > 1, "needs a machine with more than one core to tell the two apart"
    assert worker_cpus() == os.cpu_count()  # the driver: no assigned resources
    assert ray.get(_code_sandboxes.remote(), timeout=120) == (1, 1)
