"""The bounded wait every role's calls go through (`ling_rl.cluster.waits.gather`), on real Ray
actors: one deadline per call without a progress probe; with one, a call lives while it advances
and fails, named, once it stops."""

from __future__ import annotations

import time

import pytest
import ray

from ling_rl.cluster.waits import gather


class WaitError(RuntimeError):
    pass


@ray.remote(num_cpus=0, concurrency_groups={"probe": 1})
class Worker:
    """Works in steps of `pace` seconds, counting them; `progress` answers from its own thread."""

    def __init__(self) -> None:
        self.steps = 0

    def work(self, steps: int, pace: float, stall_after: int | None = None) -> int:
        for i in range(steps):
            if stall_after is not None and i == stall_after:
                time.sleep(60)  # stuck: no step finishes (the actor is killed at the end of the test)
            time.sleep(pace)
            self.steps += 1
        return self.steps

    def progress(self) -> int:
        return self.steps

    def fail(self) -> None:
        raise ValueError("bad input in step 3")


def _probe(workers: list[object]):
    return lambda k: workers[k].progress.options(concurrency_group="probe").remote()


def test_one_deadline_per_call_not_per_result(ray_session) -> None:
    """Results arriving before the deadline do not restart it: B, due after the deadline, fails
    the call at the deadline (a wait restarted per result would have let it finish)."""
    a, b = Worker.remote(), Worker.remote()
    ray.get([a.progress.remote(), b.progress.remote()])  # both started
    start = time.monotonic()
    refs = [a.work.remote(1, 1.0), b.work.remote(1, 3.0)]
    with pytest.raises(WaitError, match=r"^worker 1: run did not finish within 2 s$"):
        gather(refs, ["worker 0", "worker 1"], "run", 2.0, WaitError)
    assert 2.0 <= time.monotonic() - start < 2.9
    for w in (a, b):
        ray.kill(w)


def test_a_progressing_call_outlives_the_timeout_and_a_stalled_one_fails_named(ray_session) -> None:
    slow, stuck = Worker.remote(), Worker.remote()
    ray.get([slow.progress.remote(), stuck.progress.remote()])
    start = time.monotonic()
    # 12 steps of 0.3 s: 3.6 s in all, three times the 1.2 s stall timeout.
    assert gather([slow.work.remote(12, 0.3)], ["worker 0"], "run", 1.2, WaitError, progress=_probe([slow]),
                  poll_s=0.2) == [12]
    assert time.monotonic() - start > 3.0
    start = time.monotonic()
    refs = [slow.work.remote(3, 0.3), stuck.work.remote(50, 0.1, stall_after=10)]
    with pytest.raises(WaitError, match=r"^worker 1: run made no progress for 1.2 s \(last progress value 10\)$"):
        gather(refs, ["worker 0", "worker 1"], "run", 1.2, WaitError, progress=_probe([slow, stuck]), poll_s=0.2)
    # Stuck after ~1 s of steps: it fails 1.2 s (+ a poll) later, not after its 60 s sleep.
    assert time.monotonic() - start < 10
    for w in (slow, stuck):
        ray.kill(w)


def test_a_raising_or_dead_actor_is_named_with_the_call(ray_session) -> None:
    ok, bad = Worker.remote(), Worker.remote()
    with pytest.raises(WaitError, match=r"^worker 1 failed during check: ValueError: bad input in step 3$"):
        gather([ok.work.remote(1, 0.5), bad.fail.remote()], ["worker 0", "worker 1"], "check", 30, WaitError)
    ray.kill(bad)
    with pytest.raises(WaitError, match=r"^worker 1 died during run: "):
        gather([ok.work.remote(1, 0.1), bad.work.remote(1, 0.1)], ["worker 0", "worker 1"], "run", 30, WaitError,
               progress=_probe([ok, bad]))
    ray.kill(ok)
