"""Data-parallel rollout engines as Ray actors, with bounded waits on every call.

    group = RolloutGroup(model_dir, recipe.rollout, recipe.cluster, dtype="float32", max_model_len=2048)
    # or: RolloutGroup(..., wait=False) starts the engines, group.wait_started() waits for them
    generations = group.generate(requests, temperature=1.0, top_p=1.0, top_k=-1)  # request order kept
    group.load_weights("/dev/shm/policy.safetensors", version=step)
    group.shutdown()

Requests are split into contiguous chunks, one per engine, and the results concatenated back in
order. A dead or failed engine raises `RolloutError` naming the engine and the call: the driver
fails fast instead of waiting forever on a lost actor. Deadlines are recipe keys
(`ling_rl.cluster.waits` waits): an engine start has `rollout.start_timeout_s`; a generation
call fails when an engine finishes no vLLM step for `rollout.stall_timeout_s` (however long a
progressing call runs); every other call has one deadline, `rollout.call_timeout_s`.

A driver that overlaps generation with other work starts the call and collects it later:

    call = group.start_generate(requests, temperature=1.0, top_p=1.0, top_k=-1)   # call.refs: one per engine
    generations = group.finish_generate(call)                                       # as `generate` returns
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ling_rl.cluster import waits
from ling_rl.cluster.config import ClusterConfig
from ling_rl.cluster.placement import actor_options
from ling_rl.cluster.ray_init import init_ray
from ling_rl.rollout.config import RolloutConfig
from ling_rl.rollout.engine import PROGRESS_GROUP, Generation, GenerationRequest, RolloutEngine, check_seed_ranges


class RolloutError(RuntimeError):
    """A rollout engine died, failed, or did not answer in time."""


def split_contiguous(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """`n_parts` contiguous [start, end) ranges covering `n_items`, sizes differing by at most one."""
    base, extra = divmod(n_items, n_parts)
    bounds, start = [], 0
    for i in range(n_parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


@dataclass
class GenerateCall:
    """A generation call started on the engines (`RolloutGroup.start_generate`), not yet collected."""

    refs: list[Any]
    """One Ray ref per engine given a chunk (ready when that engine's chunk is done)."""
    engine_ids: list[int]
    """The engine of each ref."""
    n_requests: int
    started: float
    """`time.monotonic()` at the start: the stall clock of an engine not yet probed runs from here."""


class RolloutGroup:
    """`rollout_cfg.num_engines` `RolloutEngine` actors, each with `cluster_cfg.rollout` resources."""

    def __init__(self, model_dir: str, rollout_cfg: RolloutConfig, cluster_cfg: ClusterConfig, dtype: str,
                 max_model_len: int, nccl_weight_transfer: bool = False, wait: bool = True,
                 engine_cls: type[RolloutEngine] = RolloutEngine) -> None:
        """`engine_cls`: the class each engine actor runs (tests give a subclass that paces its
        vLLM steps; it must keep `RolloutEngine`'s methods)."""
        import ray

        init_ray(cluster_cfg)
        self.start_timeout_s = rollout_cfg.start_timeout_s
        self.stall_timeout_s = rollout_cfg.stall_timeout_s
        self.call_timeout_s = rollout_cfg.call_timeout_s
        res = cluster_cfg.rollout
        env = {
            # vLLM's CPU backend reads its KV cache size from the environment, at import.
            "VLLM_CPU_KVCACHE_SPACE": str(rollout_cfg.kv_cache_gib),
            # Threads per engine (`cluster.rollout.threads`, default one per reserved CPU): engines
            # generating at the same time on one node must not oversubscribe it.
            "OMP_NUM_THREADS": str(res.actor_threads),
            # vLLM's default CPU binding ("auto") pins every engine's OpenMP threads to the same
            # cores of a NUMA node; two engines on one host then spin on each other's cores (two
            # engines took 4 min to start on 2 cores instead of ~1). Unbound threads let the OS
            # spread them; an explicit binding in the driver's environment still wins.
            "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
        }
        # A second thread (concurrency group) answers `progress` while `generate` runs.
        actor_cls = ray.remote(concurrency_groups={PROGRESS_GROUP: 1})(engine_cls)
        self._engines = [
            actor_cls.options(**actor_options(res, f"engine-{i}", env)).remote(
                str(model_dir), rollout_cfg.model_dump(), dtype, max_model_len, nccl_weight_transfer)
            for i in range(rollout_cfg.num_engines)
        ]
        self._version = 0
        self._launched = time.monotonic()
        # An exception in an actor's __init__ surfaces on its first call, with the traceback.
        self._ping_refs = [e.ping.remote() for e in self._engines]
        self.start_seconds: float | None = None
        """Seconds from creating the engine actors to every engine answering (set by `wait_started`)."""
        self.first_generation_at: float | None = None
        """Wall-clock time (`time.time()`) when the first `generate` call returned (start-up metrics)."""
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Block until every engine has built its vLLM engine and answers; on a failed or late
        engine, kill all of them and raise `RolloutError` naming the engine. The constructor calls
        this unless `wait=False` (the session starts every role first, then waits for all)."""
        try:
            self._gather("start (ping)", self._ping_refs, timeout_s=self.start_timeout_s, since=self._launched)
        except RolloutError:
            self.shutdown()
            raise
        self.start_seconds = time.monotonic() - self._launched

    @property
    def engines(self) -> list[Any]:
        """The engine actor handles, in engine-index order (for diagnostics and tests)."""
        return list(self._engines)

    @property
    def version(self) -> int:
        """Policy version last loaded into every engine (0: the weights of `model_dir`)."""
        return self._version

    def generate(self, requests: list[GenerationRequest], temperature: float, top_p: float,
                 top_k: int) -> list[list[Generation]]:
        """For each request, its n generations, in request order (`start_generate`, then
        `finish_generate`)."""
        return self.finish_generate(self.start_generate(requests, temperature, top_p, top_k))

    def start_generate(self, requests: list[GenerationRequest], temperature: float, top_p: float,
                       top_k: int) -> GenerateCall:
        """Send each engine its contiguous chunk of `requests`; returns at once."""
        check_seed_ranges(requests)
        chunks = [(i, lo, hi) for i, (lo, hi) in enumerate(split_contiguous(len(requests), len(self._engines))) if hi > lo]
        refs = [self._engines[i].generate.remote(requests[lo:hi], temperature, top_p, top_k) for i, lo, hi in chunks]
        return GenerateCall(refs, [i for i, _, _ in chunks], len(requests), time.monotonic())

    def finish_generate(self, call: GenerateCall) -> list[list[Generation]]:
        """Wait for `call` while its engines progress: `RolloutError` naming the engine when one
        dies, fails, or finishes no vLLM step for `rollout.stall_timeout_s`."""
        per_engine = self._gather("generate", call.refs, call.engine_ids, timeout_s=self.stall_timeout_s,
                                  since=call.started, progress=True)
        results = [gens for chunk in per_engine for gens in chunk]
        if len(results) != call.n_requests:
            raise RolloutError(f"generate: {call.n_requests} requests gave {len(results)} results")
        if self.first_generation_at is None:
            self.first_generation_at = time.time()
        return results

    def load_weights(self, paths: str | list[str], version: int) -> list[float]:
        """Every engine reloads its weights from the safetensors file(s) at `paths`; per engine,
        the reload seconds."""
        seconds = self._gather("load_weights", [e.load_weights.remote(paths, version) for e in self._engines])
        self._version = version
        return seconds

    def load_weight_refs(self, refs: list[Any], version: int, folder: str) -> list[dict[str, float]]:
        """Every engine fetches the object-store buckets `refs` and reloads from them (see
        `RolloutEngine.load_weight_refs`); per engine, its timings."""
        timings = self._gather("load_weights", [e.load_weight_refs.remote(refs, version, folder) for e in self._engines])
        self._version = version
        return timings

    def node_ids(self) -> list[str]:
        """Each engine's Ray node id, in engine order."""
        return self._gather("node_id", [e.node_id.remote() for e in self._engines])

    def submit(self, method: str, args_of: Callable[[int], tuple[Any, ...]] = lambda i: ()) -> list[Any]:
        """Start `method(*args_of(i))` on every engine i without waiting; `wait` collects it."""
        return [getattr(e, method).remote(*args_of(i)) for i, e in enumerate(self._engines)]

    def wait(self, refs: list[Any], call: str) -> list[Any]:
        """Per engine, the results of `submit`'s calls, within `rollout.call_timeout_s`."""
        return self._gather(call, refs)

    def set_version(self, version: int) -> None:
        """Record the policy version every engine now holds (after a sync driven with `submit`)."""
        self._version = version

    def shutdown(self) -> None:
        """Kill the engine actors (idempotent)."""
        import ray

        for engine in self._engines:
            ray.kill(engine, no_restart=True)
        self._engines = []

    def _gather(self, call: str, refs: list[Any], engine_ids: list[int] | None = None, timeout_s: float | None = None,
                since: float | None = None, progress: bool = False) -> list[Any]:
        """Results of `refs` (engine_ids[k] made refs[k]) by `waits.gather`: failing on the first
        dead or failed engine, or after `timeout_s` (default `call_timeout_s`) without progress;
        `progress`: probe each engine's vLLM step count (else one deadline for the call)."""
        ids = list(range(len(refs))) if engine_ids is None else engine_ids
        engines = self._engines
        probe = (lambda k: engines[ids[k]].progress.options(concurrency_group=PROGRESS_GROUP).remote()) if progress else None
        return waits.gather(refs, [f"rollout engine {i}" for i in ids], call,
                            self.call_timeout_s if timeout_s is None else timeout_s, RolloutError,
                            progress=probe, since=since)
