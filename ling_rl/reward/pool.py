"""The reward pool: scores rollout batches with the recipe's plugins on Ray worker processes.

    driver                                   RewardWorker actors (processes)
    score(rollouts)
      plan: per plugin, calls on slices  --->  run(plugin, calls): sync calls in the main thread,
            (or per group, group-level)         async calls concurrently on the worker's loop
      dispatch one task per idle worker  <---  CallResult per call (scores | error | timed out)
      a task past timeout_s + grace:
        kill that worker, start a new one
      a failed or timed-out call over several
        responses: once more, one call each  --->  (the response that hangs costs only itself)
      total = sum(weight * score), breakdown, RewardMetrics
      (a None from a required plugin, or from every plugin, skips the sample; so does a call
       that failed, timed out or raised InfrastructureError: a response the plugin could not
       judge scores nothing, not 0, unless the plugin sets a numeric error_value)

Workers are processes so CPU-bound plugins run in parallel and a plugin that hangs or crashes
costs one worker, never the driver. A worker holds at most one task at a time, so a task's
deadline counts from its dispatch, not from time spent queued behind another task.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray import cloudpickle

from ling_rl.cluster.config import RoleResources
from ling_rl.cluster.placement import actor_options
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.contract import INPUT_KEYWORDS, EnvironmentView
from ling_rl.reward.loading import ResolvedPlugin, RewardResolutionError, resolve_rewards
from ling_rl.reward.metrics import MAX_ERRORS_KEPT, PluginMetrics, RewardMetrics
from ling_rl.reward.worker import CallInput, CallResult, RewardWorker, task_timeout_s
from ling_rl.types import Rollout, ScoredRollout

log = logging.getLogger(__name__)


class RewardWorkerError(RuntimeError):
    """Reward workers could not be started (e.g. a class plugin's `__init__` raised)."""


@dataclass
class _Job:
    """One task for one worker: calls of one plugin (several only for async plugins)."""

    plugin: int
    indices: list[list[int]]
    """Per call, the batch positions it scores."""
    calls: list[CallInput]


class RewardPool:
    """Reward plugins on `num_workers` Ray actors. Needs Ray running (`ling_rl.cluster.ray_init`).

    `kill_grace_s`: how long past `timeout_s` a sync call may run before its worker is killed
    (covers task dispatch; a call that finishes late but before the kill still counts as timed out).
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec],
        num_workers: int = 1,
        *,
        worker_cpus: float = 0.5,
        kill_grace_s: float = 1.0,
        start_timeout_s: float = 120.0,
        wait: bool = True,
        worker_resources: RoleResources | None = None,
    ) -> None:
        """Start the workers; with `wait` (default) also wait until their plugins are up (`wait_started`).
        `worker_resources`: each worker's resources (`cluster.reward`: CPUs, GPUs, node placement);
        None: `worker_cpus` CPUs."""
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not ray.is_initialized():
            raise RuntimeError("Ray is not running: call ling_rl.cluster.ray_init.init_ray() before RewardPool()")
        self.plugins: list[ResolvedPlugin] = resolve_rewards(specs)
        self.kill_grace_s = kill_grace_s
        self.start_timeout_s = start_timeout_s
        self._payload = _serialize(self.plugins)
        self._resources = worker_resources or RoleResources(num_cpus=worker_cpus)
        self._spawned = 0
        """Workers started so far, replacements included (each gets its own log, `reward-<k>`)."""
        self._actor_cls = ray.remote(max_restarts=0)(RewardWorker)
        self._workers: list[Any] = [self._spawn() for _ in range(num_workers)]
        self._replaced = 0
        self._starting: dict[int, Any] = {}
        """Worker index -> ready ref of a replacement that is still starting."""
        self._ready_refs = [w.ready.remote() for w in self._workers]
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Block until every worker has instantiated and checked the plugins (at most
        `start_timeout_s`); on failure kill the workers and raise `RewardWorkerError`."""
        try:
            start_errors = ray.get(self._ready_refs, timeout=self.start_timeout_s)
        except Exception as e:
            self.shutdown()
            raise RewardWorkerError(f"reward workers failed to start: {e}") from e
        start_error = next((e for e in start_errors if e is not None), None)
        if start_error is not None:
            self.shutdown()
            raise RewardWorkerError(start_error)

    # --- public ----------------------------------------------------------------------------------

    def score(self, rollouts: Sequence[Rollout]) -> tuple[list[ScoredRollout], RewardMetrics]:
        """Score a batch: every plugin on every rollout; returns rollouts in input order + metrics."""
        if not self._workers:
            raise RuntimeError("RewardPool.score() after shutdown()")
        start, replaced_before = time.monotonic(), self._replaced
        jobs = self._plan(rollouts)
        results = self._execute(jobs)
        retries = self._retries(rollouts, jobs, results)
        if retries:
            jobs, results = jobs + retries, results + self._execute(retries)
        scores, unscored, failed = self._scores_per_plugin(len(rollouts), jobs, results)
        scored = [self._total(r, [s[i] for s in scores], i in unscored) for i, r in enumerate(rollouts)]
        elapsed = time.monotonic() - start
        metrics = self._metrics(scored, scores, failed, jobs, results, retries, elapsed, self._replaced - replaced_before)
        return scored, metrics

    def node_ids(self) -> list[str]:
        """Each worker's Ray node id, in worker order."""
        return ray.get([w.node_id.remote() for w in self._workers], timeout=self.start_timeout_s)

    def shutdown(self) -> None:
        """Kill the workers (idempotent)."""
        for worker in self._workers:
            ray.kill(worker, no_restart=True)
        self._workers = []
        self._starting = {}

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- planning --------------------------------------------------------------------------------

    def _plan(self, rollouts: Sequence[Rollout]) -> list[_Job]:
        n = len(rollouts)
        if n == 0:
            return []
        columns = self._column_names(rollouts)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rollouts):
            groups.setdefault(r.group, []).append(i)
        workers = len(self._workers)
        size = -(-n // workers)
        slices = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
        jobs = []
        for p, plugin in enumerate(self.plugins):
            units = list(groups.values()) if plugin.group_level else slices
            if plugin.is_async:  # one task per worker; its calls run concurrently there
                shares = [units[w::workers] for w in range(min(workers, len(units)))]
            else:  # one call per task, so a hung call takes down only its own worker's task
                shares = [[u] for u in units]
            for share in shares:
                jobs.append(_Job(p, share, [_call_input(rollouts, idx, columns, plugin.conversational) for idx in share]))
        return jobs

    def _retries(self, rollouts: Sequence[Rollout], jobs: list[_Job], results: list[list[CallResult]]) -> list[_Job]:
        """One job per response of every call over several responses that failed or timed out (not
        for infrastructure failures, nor group-level plugins, whose unit is the group): the response
        that hangs or breaks the plugin then costs only itself, not its slice. At most one retry
        round, so a batch waits at most about twice a plugin's `timeout_s` (plus worker restarts)."""
        retries = []
        for job, job_results in zip(jobs, results):
            plugin = self.plugins[job.plugin]
            if plugin.group_level:
                continue
            for indices, result in zip(job.indices, job_results):
                if len(indices) > 1 and result.scores is None and not result.infrastructure:
                    columns = self._column_names(rollouts)
                    retries.extend(_Job(job.plugin, [[i]], [_call_input(rollouts, [i], columns, plugin.conversational)])
                                   for i in indices)
        return retries

    def _column_names(self, rollouts: Sequence[Rollout]) -> list[str]:
        names = sorted({k for r in rollouts for k in r.sample.columns})
        for name in names:
            if name in INPUT_KEYWORDS:
                raise ValueError(f"dataset column {name!r} collides with a reward plugin input ({', '.join(INPUT_KEYWORDS)})")
            for plugin in self.plugins:
                if not plugin.is_class and name in plugin.args:
                    raise ValueError(f"reward plugin {plugin.key!r}: args key {name!r} collides with the dataset column {name!r}")
        return names

    # --- execution -------------------------------------------------------------------------------

    def _execute(self, jobs: list[_Job]) -> list[list[CallResult]]:
        """Run jobs on the workers, at most one task per worker, killing any that overruns."""
        results: list[list[CallResult]] = [[] for _ in jobs]
        pending = deque(range(len(jobs)))
        # A replacement still starting from the last batch is not idle: a task sent to it now
        # would spend its deadline waiting for the process to come up.
        idle = deque(w for w in range(len(self._workers)) if w not in self._starting)
        running: dict[Any, tuple[int, int, float, float]] = {}  # ref -> job, worker, dispatched, deadline
        start_deadline = time.monotonic() + self.start_timeout_s
        starting = {ref: (w, start_deadline) for w, ref in self._starting.items()}  # ready ref -> worker, deadline
        while pending or running:
            while pending and idle:
                j, w = pending.popleft(), idle.popleft()
                now = time.monotonic()
                ref = self._workers[w].run.remote(jobs[j].plugin, jobs[j].calls)
                limit = task_timeout_s(self.plugins[jobs[j].plugin], len(jobs[j].calls))  # async: calls wait for slots
                running[ref] = (j, w, now, now + limit + self.kill_grace_s)
            deadlines = [d for *_, d in running.values()] + [d for _, d in starting.values()]
            wait_s = max(0.0, min(deadlines) - time.monotonic())
            done, _ = ray.wait([*running, *starting], num_returns=1, timeout=wait_s)
            for ref in done:
                if ref in starting:
                    w, _ = starting.pop(ref)
                    try:
                        start_error = ray.get(ref)
                    except Exception as e:
                        raise RewardWorkerError(f"a replacement reward worker failed to start: {e}") from e
                    if start_error is not None:
                        raise RewardWorkerError(f"a replacement reward worker failed to start: {start_error}")
                    idle.append(w)
                    continue
                j, w, dispatched, _ = running.pop(ref)
                try:
                    results[j] = ray.get(ref)
                    idle.append(w)
                except ray.exceptions.RayActorError as e:
                    results[j] = _failed(jobs[j], time.monotonic() - dispatched, f"reward worker died: {e}")
                    starting[self._replace(w)] = (w, time.monotonic() + self.start_timeout_s)
                except ray.exceptions.RayError as e:
                    results[j] = _failed(jobs[j], time.monotonic() - dispatched, f"reward task failed: {e}")
                    idle.append(w)
            now = time.monotonic()
            for ref, (j, w, dispatched, deadline) in list(running.items()):
                if deadline <= now:
                    del running[ref]
                    results[j] = [CallResult(None, now - dispatched, timed_out=True) for _ in jobs[j].calls]
                    log.warning("reward plugin %r overran its timeout; killing and replacing its worker",
                                self.plugins[jobs[j].plugin].key)
                    starting[self._replace(w)] = (w, now + self.start_timeout_s)
            for ref, (w, deadline) in starting.items():
                if deadline <= now:
                    raise RewardWorkerError(f"a replacement reward worker did not start within {self.start_timeout_s} s")
        self._starting = {w: ref for ref, (w, _) in starting.items()}
        return results

    def _spawn(self) -> Any:
        # The driver's sys.path travels with the worker: plugins found through paths added after
        # Ray started (entry points, packages in temp folders) must unpickle there too.
        options = actor_options(self._resources, f"reward-{self._spawned}")
        self._spawned += 1
        return self._actor_cls.options(**options).remote(self._payload, list(sys.path))

    def _replace(self, w: int) -> Any:
        ray.kill(self._workers[w], no_restart=True)
        self._workers[w] = self._spawn()
        self._replaced += 1
        return self._workers[w].ready.remote()

    # --- assembling ------------------------------------------------------------------------------

    def _scores_per_plugin(
        self, n: int, jobs: list[_Job], results: list[list[CallResult]]
    ) -> tuple[list[list[float | None]], set[int], list[set[int]]]:
        """Per plugin, the score of each batch position; the positions left unscored (None and
        skipped: the response was never judged); and per plugin, the positions whose call failed or
        timed out. A later call of a position (a retry, `_retries`) supersedes an earlier one.

        A failed or timed-out call is not a judgement of the response: its positions stay None and
        are skipped (and so out of pass rates, dynamic sampling and advantages), unless the
        plugin sets a numeric `error_value`; an infrastructure failure always leaves them unscored."""
        scores: list[list[float | None]] = [[None] * n for _ in self.plugins]
        failed: list[dict[int, bool]] = [{} for _ in self.plugins]
        """Per plugin, position -> whether its latest call failed, timed out or broke."""
        for job, job_results in zip(jobs, results):
            plugin = self.plugins[job.plugin]
            for indices, result in zip(job.indices, job_results):
                if result.scores is not None:
                    values: list[float | None] = list(result.scores)
                elif result.infrastructure or plugin.error_value is None:
                    values = [None] * len(indices)
                else:
                    values = [plugin.error_value] * len(indices)
                for i, value in zip(indices, values):
                    scores[job.plugin][i] = value
                    failed[job.plugin][i] = result.scores is None
        failed_sets = [{i for i, f in per.items() if f} for per in failed]
        unscored = {i for p, per in enumerate(failed_sets) for i in per if scores[p][i] is None}
        return scores, unscored, failed_sets

    def _total(self, rollout: Rollout, per_plugin: list[float | None], unscored: bool) -> ScoredRollout:
        total = sum(p.weight * s for p, s in zip(self.plugins, per_plugin) if s is not None)
        return ScoredRollout(
            rollout=rollout,
            reward=float(total),
            breakdown={p.key: s for p, s in zip(self.plugins, per_plugin)},
            # An episode whose environment failed is no judgement of the policy: never trained on.
            skipped=unscored or rollout.failed or _skips(self.plugins, per_plugin),
        )

    def _metrics(
        self,
        scored: list[ScoredRollout],
        scores: list[list[float | None]],
        failed: list[set[int]],
        jobs: list[_Job],
        results: list[list[CallResult]],
        retries: list[_Job],
        elapsed: float,
        replaced: int,
    ) -> RewardMetrics:
        per_plugin: dict[int, list[CallResult]] = {p: [] for p in range(len(self.plugins))}
        for job, job_results in zip(jobs, results):
            per_plugin[job.plugin].extend(job_results)
        plugins = {}
        for p, plugin in enumerate(self.plugins):
            calls = per_plugin[p]
            used = [s for s in scores[p] if s is not None]
            unscored = [i for i in failed[p] if scores[p][i] is None]
            errors = list(dict.fromkeys(c.error for c in calls if c.error is not None))
            failures = sum(c.error is not None for c in calls)
            infra_failures = sum(c.infrastructure for c in calls)
            timeouts = sum(c.timed_out for c in calls)
            if failures or timeouts:
                log.warning("reward plugin %r: %d failed (%d of them infrastructure) and %d timed-out calls of %d%s",
                            plugin.key, failures, infra_failures, timeouts, len(calls),
                            f"; first error: {errors[0]}" if errors else "")
            extra_keys = sorted({k for c in calls for k in c.metrics})
            plugins[plugin.key] = PluginMetrics(
                mean_score=sum(used) / len(used) if used else None,
                calls=len(calls),
                latency_mean_s=sum(c.latency_s for c in calls) / len(calls) if calls else 0.0,
                latency_max_s=max((c.latency_s for c in calls), default=0.0),
                failures=failures,
                infra_failures=infra_failures,
                timeouts=timeouts,
                skipped=len(scores[p]) - len(used) - len(unscored),
                failed_samples=len(failed[p]),
                unscored_samples=len(unscored),
                retried_samples=sum(r.plugin == p for r in retries),
                skipped_samples=len(scores[p]) - len(used) - len(unscored) if plugin.required else 0,
                errors=errors[:MAX_ERRORS_KEPT],
                extra={k: _mean([c.metrics[k] for c in calls if k in c.metrics]) for k in extra_keys},
            )
        kept = [s.reward for s in scored if not s.skipped]
        return RewardMetrics(
            plugins=plugins,
            samples=len(scored),
            skipped=len(scored) - len(kept),
            reward_mean=_mean(kept) if kept else None,
            elapsed_s=elapsed,
            samples_per_s=len(scored) / elapsed if elapsed > 0 else 0.0,
            workers_replaced=replaced,
        )


def _skips(plugins: list[ResolvedPlugin], per_plugin: list[float | None]) -> bool:
    """Whether a sample is left out of training: a required plugin could not score it (training on
    the other plugins alone would reward it for the wrong thing), or no plugin scored it."""
    return all(s is None for s in per_plugin) or any(p.required and s is None for p, s in zip(plugins, per_plugin))


def _serialize(plugins: list[ResolvedPlugin]) -> bytes:
    for plugin in plugins:  # one by one, so the error names the plugin that cannot travel
        try:
            cloudpickle.dumps(plugin)
        except Exception as e:
            raise RewardResolutionError(
                f"reward plugin {plugin.key!r} cannot be sent to the reward workers (pickling failed: {e!r})"
            ) from e
    return cloudpickle.dumps(plugins)


def _call_input(rollouts: Sequence[Rollout], indices: list[int], columns: list[str], conversational: bool) -> CallInput:
    rows = [rollouts[i] for i in indices]
    views = {}
    if any(r.episode is not None for r in rows):  # TRL's `environments` argument, see EnvironmentView
        views = {"environments": [EnvironmentView(r.episode.env_reward if r.episode else None) for r in rows]}
    return CallInput(
        prompts=[_prompt(r, conversational) for r in rows],
        completions=[_completion(r, conversational) for r in rows],
        completion_ids=[list(r.response_ids) for r in rows],
        columns={**{name: [r.sample.columns.get(name) for r in rows] for name in columns}, **views},
    )


def _prompt(rollout: Rollout, conversational: bool) -> Any:
    """The prompt as the plugin takes it: its messages (TRL's conversational form) when the data is
    conversational and the plugin follows TRL (`ResolvedPlugin.conversational`), else its text."""
    messages = rollout.sample.messages
    return [dict(m) for m in messages] if conversational and messages is not None else rollout.sample.prompt


def _completion(rollout: Rollout, conversational: bool) -> Any:
    """The response as the plugin takes it: one assistant message (as TRL passes a completion of
    conversational data), a multi-turn episode's messages (assistant turns with their `tool_calls`,
    and the tool results), or its text (an episode's: the model's turns only)."""
    if conversational and rollout.episode is not None:
        return [dict(m) for m in rollout.episode.messages]
    if conversational and rollout.sample.messages is not None:
        return [{"role": "assistant", "content": rollout.response_text}]
    return rollout.response_text


def _failed(job: _Job, latency: float, message: str) -> list[CallResult]:
    return [CallResult(None, latency, error=message) for _ in job.calls]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
