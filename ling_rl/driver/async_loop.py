"""The asynchronous driver (`rollout.max_staleness: k >= 1`): the engines generate while the learner
trains. k = 0 runs the synchronous `ling_rl/driver/loop.py`, the reference, unchanged.

One RL step n (the learner holds version n: the weights after n updates):

    engines:  ..gen call (version n-1)..|     |sync n|======== gen call (version n) ========|
    learner:  ===== train step n-1 =====|     |      |batch|===== train step n =====|
    driver:   gather() -> score() -> sync_weights(n) -> launch() -> take_batch() -> train_step()
                 ^                                                                       |
                 +-------------- next step: the call launched here is gathered ----------+

    gather()        wait for the call in flight; its tokens join their responses (version n-1)
    score()         reward workers on the groups whose G responses all finished; dynamic
                    sampling drops the flat ones (their slots are free for launch())
    sync_weights()  learner -> engines, between two calls (an engine call is never interrupted)
    launch()        admit new prompts up to the capacity (k + 1) x prompts_per_step, continue
                    every partial response (prompt + tokens so far), one Ray call, not waited for
    take_batch()    the oldest prompts_per_step scored groups; none holds a token older than
                    version n - k (asserted); groups that cannot make it are dropped, counted;
                    curriculum.update with every group scored in the step
    train_step()    the learner trains while the engines generate the next call

Without enough scored groups after a gather, the driver launches and gathers more calls at the
same version before training (no version changes without a learner step; with dynamic sampling
at most `curriculum.max_refill_rounds` such rounds once groups were scored). On eval and checkpoint
steps the call in flight is gathered after the learner step (the pipeline drains) so the engines
evaluate the new weights and the checkpoint holds every partial response (`InflightBuffer`).
Partial rollouts, versions and admission: `ling_rl/rollout/inflight.py`; docs/async.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ling_rl.driver import loop as sync_loop
from ling_rl.driver import session as sessions
from ling_rl.driver.batching import build_train_batch
from ling_rl.config import Recipe
from ling_rl.curriculum.dynamic_sampling import is_flat
from ling_rl.curriculum.evo_cot import split_groups
from ling_rl.driver.evaluation import evaluate
from ling_rl.driver.interrupt import StopRequest
from ling_rl.learner.group import LearnerError
from ling_rl.reward.signal import NoRewardSignal, SignalMonitor
from ling_rl.rollout.engine import generation_texts
from ling_rl.rollout.group import RolloutError, split_contiguous
from ling_rl.rollout.inflight import CallPlan, InflightBuffer
from ling_rl.rollout.requests import request_seed
from ling_rl.tracking import PhaseTimer
from ling_rl.types import ScoredRollout

ASYNC_LOG = "async.jsonl"
"""Per train step, the groups trained (serial, prompt id, admission version) and the version of
every token of every response (run-length encoded): the record the staleness tests read."""


class AsyncDriverError(RolloutError):
    """The rollout side of the asynchronous driver cannot give the learner a batch (every group
    dropped); a `RolloutError`, so `ling-rl train` prints it as one message."""


def train(recipe: Recipe, run_dir: Path) -> Path:
    """Run (or resume) `recipe` in `run_dir`: the synchronous loop for max_staleness 0, else the
    pipelined one. Returns the final Hugging Face export folder."""
    if recipe.rollout.max_staleness == 0:
        return sync_loop.train(recipe, run_dir)
    s = sessions.start(recipe, run_dir)
    last = recipe.run.steps - 1
    stop = StopRequest.install()
    monitor = SignalMonitor(recipe.reward_signal.max_failed_steps, recipe.rewards)
    try:
        pipe = Pipeline(s)
        if recipe.dft.enabled and s.start_step == 0:
            sync_loop.warm_start(s)
        pending_eval = evaluate(s, -1) if recipe.eval.every and s.start_step == 0 else {}
        for step in range(s.start_step, recipe.run.steps):
            if stop.requested:
                raise stop.interrupted(step, pipe.save_done(step))
            timer = PhaseTimer()
            calls = pipe.fill(step, timer)
            seen, reward_metrics, dyn_metrics = pipe.step_scores()
            cur_metrics = s.curriculum.update(step, seen)
            batch_groups = pipe.buffer.take_batch(step, recipe.rollout.prompts_per_step)
            kept = [x for g in batch_groups for x in g.scored] or pipe.fallback(seen, dyn_metrics)
            batch, batch_metrics = build_train_batch(kept, recipe.algorithm, s.segmenter, s.pad_id, version=step)
            pipe.record(step, batch_groups)
            with timer.phase("learner"):
                learner_metrics = pipe.train(batch)
            s.skipped_steps += int(learner_metrics["skipped"])
            learner_metrics["skipped_total"] = float(s.skipped_steps)
            pipe.trained(step, skipped=bool(learner_metrics["skipped"]))
            eval_due = bool(recipe.eval.every) and ((step + 1) % recipe.eval.every == 0 or step == last)
            # A step may train only on groups scored in earlier steps (k >= 2): nothing new to judge.
            stalled = monitor.observe(step, reward_metrics, seen) if seen else None
            save_due = s.checkpointer.due(step, last) or stalled is not None
            sync_metrics: dict[str, float] = {}
            if eval_due or save_due or step == last:
                pipe.drain(timer)  # the call in flight joins the buffer: checkpointed, or discarded at the end
            if eval_due:
                sync_metrics = pipe.sync(timer)
            eval_metrics, pending_eval = pending_eval, {}
            if eval_due:
                with timer.phase("eval"):
                    eval_metrics = evaluate(s, step)
            s.tracker.log(step, {**reward_metrics, **batch_metrics, **sync_loop.rollout_metrics(kept), **cur_metrics,
                                 **dyn_metrics, **eval_metrics, **pipe.sync_metrics, **sync_metrics,
                                 **sync_loop.train_metrics(learner_metrics),
                                 **pipe.step_metrics(step, batch_groups, calls), **timer.as_metrics(),
                                 **s.startup_metrics()})
            pipe.sync_metrics = {}
            if save_due:
                pipe.save(step)
            if stalled:
                raise NoRewardSignal(f"{stalled}; saved checkpoint {s.checkpointer.complete()[-1]}")
        return sync_loop.export_final(s, run_dir)
    finally:
        stop.restore()
        s.close()


@dataclasses.dataclass
class InFlightCall:
    plan: CallPlan
    refs: list[Any]
    launched_at: float
    finished_at: float | None = None
    """When the driver saw every engine's result ready: exact when it was waiting (on the learner
    or on this call), else when it next looked (an upper bound of the engines' busy time)."""


class Pipeline:
    """The driver's side of the overlap: the in-flight buffer, the one generation call in flight,
    the engines' and the learner's versions, and the per-step accounting of both roles' time."""

    def __init__(self, s: sessions.Session) -> None:
        cfg = s.recipe.rollout
        self.s = s
        self.buffer = InflightBuffer(cfg.group_size, cfg.prompts_per_step, cfg.max_staleness, cfg.max_interruptions)
        if s.async_state is not None:  # resumed: the checkpoint's open and ready groups
            self.buffer.load_state_dict(s.async_state)
        self.call: InFlightCall | None = None
        self.learner_version = s.start_step
        self.engine_version = s.start_step  # session.start synced the resumed weights
        self.weights_changed = False
        self.sync_metrics: dict[str, float] = {}
        # This step's scoring (`step_scores` reads and resets them).
        self.step_seen: list[ScoredRollout] = []
        self.step_reward_metrics: dict[str, float] = {}
        self.step_groups = self.step_flat = self.refills = 0
        self.engine_busy_s = 0.0
        self.log_path = s.run_dir / ASYNC_LOG
        _truncate_log(self.log_path, s.start_step)
        self.learner_timeout_s = float(s.learner.timeout)

    # --- generation ------------------------------------------------------------------------------

    def fill(self, step: int, timer: PhaseTimer) -> int:
        """Gather, score, sync and launch until prompts_per_step scored groups can be trained at
        this step; the last call launched stays in flight. With dynamic sampling, flat groups are
        dropped as they are scored and their slots refilled by the next call, at most
        `curriculum.max_refill_rounds` extra rounds once groups were scored; then the step trains
        on what it has (or falls back). Returns the calls launched."""
        cfg, cur = self.s.recipe.rollout, self.s.recipe.curriculum
        limit = 4 * (cfg.max_staleness + 1) + (cur.max_refill_rounds if cur.dynamic_sampling else 0)
        calls = trainable = 0
        for _ in range(limit):
            self.gather(timer)
            self.score(timer)
            self.sync_metrics.update(self.sync(timer))
            launched = self.launch()
            calls += launched
            trainable = sum(g.start_version >= step - cfg.max_staleness for g in self.buffer.ready)
            if trainable >= cfg.prompts_per_step:
                return calls
            if cur.dynamic_sampling and self.step_seen:
                if self.refills >= cur.max_refill_rounds:
                    return calls
                self.refills += 1
            if not launched:
                break
        raise AsyncDriverError(
            f"async driver, step {step}: {calls} generation call(s) left {trainable} of {cfg.prompts_per_step} groups "
            f"trainable ({self.buffer.counters.dropped_responses} responses dropped for rollout.max_interruptions, "
            f"{self.buffer.counters.stale_dropped_responses} for rollout.max_staleness); raise max_interruptions or "
            f"token_budget")

    def launch(self) -> bool:
        """Admit new prompts into the free slots and send the next call to the engines (not waited
        for); False when there was nothing to generate."""
        s, cfg = self.s, self.s.recipe.rollout
        free = self.buffer.free_slots()
        if free:
            # The data mix's random choice is seeded per call (several calls may share a step).
            self.buffer.admit(s.next_prompts(free, self.buffer.calls), self.engine_version,
                              s.curriculum.max_response_tokens())
        plan = self.buffer.plan_call(cfg.token_budget, lambda call, index: request_seed(cfg, call, index))
        if not plan.requests:
            return False
        plan.version = self.engine_version
        bounds = split_contiguous(len(plan.requests), len(s.rollout.engines))
        refs = s.rollout.submit("generate", lambda i: (plan.requests[bounds[i][0]:bounds[i][1]], cfg.temperature,
                                                       cfg.top_p, cfg.top_k))
        self.call = InFlightCall(plan, refs, time.perf_counter())
        return True

    def gather(self, timer: PhaseTimer) -> None:
        """Wait for the call in flight (the learner idles meanwhile) and absorb its tokens."""
        if self.call is None:
            return
        call, self.call = self.call, None
        with timer.phase("wait_generate"):
            per_engine = self.s.rollout.wait(call.refs, "generate")  # bounded: RolloutError names the engine
        self._seen_finished(call)
        outputs = [gens for chunk in per_engine for gens in chunk]
        self.buffer.absorb(call.plan, outputs, call.plan.version)
        self.engine_busy_s += call.finished_at - call.launched_at  # type: ignore[operator]
        if self.s.rollout.first_generation_at is None:
            self.s.rollout.first_generation_at = time.time()

    def drain(self, timer: PhaseTimer) -> None:
        """Gather the call in flight without launching another (eval and checkpoint steps)."""
        self.gather(timer)

    def trained(self, step: int, skipped: bool) -> None:
        """The learner finished `step`: it holds version step + 1 (the same weights if it skipped)."""
        self.learner_version = step + 1
        self.weights_changed = self.weights_changed or not skipped

    def sync(self, timer: PhaseTimer) -> dict[str, float]:
        """Bring the engines to the learner's version between calls; a learner that skipped its
        updates changed no weight, so the engines only take the new version number."""
        if self.engine_version == self.learner_version:
            return {}
        assert self.call is None, "weights are synced between generation calls"
        metrics: dict[str, float] = {}
        if self.weights_changed:
            with timer.phase("sync"):
                metrics = self.s.sync_weights(self.learner_version)
        else:
            self.s.rollout.set_version(self.learner_version)
        self.engine_version, self.weights_changed = self.learner_version, False
        return metrics

    def _seen_finished(self, call: InFlightCall) -> None:
        if call.finished_at is None:
            call.finished_at = time.perf_counter()

    # --- scoring and training --------------------------------------------------------------------

    def score(self, timer: PhaseTimer) -> None:
        """Score the groups whose G responses all finished; the non-flat ones (all, without dynamic
        sampling) become ready. The step's first scoring gives its reward metrics (as the
        synchronous loop's first round: the policy as sampled)."""
        s = self.s
        rollouts = self.buffer.pop_completed(lambda ids: generation_texts(s.tokenizer, ids))
        if not rollouts:
            return
        with timer.phase("reward"):
            scored, metrics = s.rewards.score(rollouts)
        if not self.step_seen:
            self.step_reward_metrics = metrics.as_dict()
        self.step_seen += scored
        for group in split_groups(scored):
            self.step_groups += 1
            if s.recipe.curriculum.dynamic_sampling and is_flat(group, s.curriculum.filter_value):
                self.step_flat += 1
                continue
            start = min(min(x.rollout.token_versions or [x.rollout.policy_version]) for x in group)
            self.buffer.add_ready(group[0].rollout.group, start, group)

    def step_scores(self) -> tuple[list[ScoredRollout], dict[str, float], dict[str, float]]:
        """Every response scored in this step, the step's reward metrics and `dynamic/*` metrics
        (empty when nothing finished in the step: its batch was scored in earlier steps)."""
        seen, metrics, dyn = self.step_seen, self.step_reward_metrics, {}
        if self.s.recipe.curriculum.dynamic_sampling and seen:
            dyn = {"dynamic/flat_groups_dropped": float(self.step_flat), "dynamic/generated_groups": float(self.step_groups),
                   "dynamic/kept_groups": float(self.step_groups - self.step_flat),
                   "dynamic/refill_rounds": float(self.refills), "dynamic/fallback": 0.0}
        self.step_seen, self.step_reward_metrics, self.step_groups, self.step_flat, self.refills = [], {}, 0, 0, 0
        return seen, metrics, dyn

    def fallback(self, seen: list[ScoredRollout], dyn_metrics: dict[str, float]) -> list[ScoredRollout]:
        """No group to train on (every one finished this step was flat): as the synchronous loop's
        dynamic sampling, a batch of them marked skipped, so the learner skips the update."""
        if not seen:
            raise AsyncDriverError("async driver: no group to train on and none scored this step")
        dyn_metrics["dynamic/fallback"] = 1.0
        return [dataclasses.replace(x, skipped=True) for x in seen]

    def train(self, batch: Any) -> dict[str, float]:
        """The learner's step, while the call in flight runs on the engines; notes when that call
        finishes (the engines' busy time) and fails, naming the learner, past its timeout."""
        import ray

        refs = self.s.learner.submit("train_step", ray.put(batch))
        learner_left = set(refs)
        engine_left = set(self.call.refs) if self.call is not None and self.call.finished_at is None else set()
        deadline = time.monotonic() + self.learner_timeout_s
        while learner_left:
            ready, _ = ray.wait(list(learner_left | engine_left), num_returns=1,
                                timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                raise LearnerError(f"learner train_step: no answer from {len(learner_left)} rank(s) within "
                                   f"{self.learner_timeout_s:.0f} s (async driver)")
            learner_left.discard(ready[0])
            if ready[0] in engine_left:
                engine_left.discard(ready[0])
                if not engine_left and self.call is not None:
                    self._seen_finished(self.call)
        return self.s.learner.wait(refs, "train_step")[0]  # a failed rank raises LearnerError here

    # --- accounting, logs, checkpoints -----------------------------------------------------------

    def step_metrics(self, step: int, batch: list[Any], calls: int) -> dict[str, float]:
        """`async/*`: staleness of the trained tokens (mean, max, share per lag), partial rollouts,
        interruptions, drops, the buffer, and each role's busy time in this step."""
        k = self.s.recipe.rollout.max_staleness
        lags: Counter[int] = Counter()
        partial = responses = 0
        rewards = [x.reward for g in batch for x in g.scored if not x.skipped]
        for group in batch:
            for x in group.scored:
                versions = x.rollout.token_versions or []
                lags.update(step - v for v in versions)
                partial += len(set(versions)) > 1
                responses += 1
        tokens = sum(lags.values())
        counters = self.buffer.take_counters()
        out = {
            "async/staleness_mean": sum(lag * n for lag, n in lags.items()) / max(tokens, 1),
            "async/staleness_max": float(max(lags, default=0)),
            **{f"async/lag{lag}_frac": lags[lag] / max(tokens, 1) for lag in range(k + 1)},
            "async/partial_frac": partial / max(responses, 1),
            "async/batch_reward_mean": sum(rewards) / len(rewards) if rewards else 0.0,
            "async/interruptions": float(counters.interruptions),
            "async/dropped_responses": float(counters.dropped_responses),
            "async/stale_dropped_responses": float(counters.stale_dropped_responses),
            "async/admitted_groups": float(counters.admitted_groups),
            "async/calls": float(calls),
            "async/open_groups": float(len(self.buffer.open)),
            "async/ready_groups": float(len(self.buffer.ready)),
            "async/engine_busy_s": self.engine_busy_s,
        }
        self.engine_busy_s = 0.0
        return out

    def record(self, step: int, batch: list[Any]) -> None:
        """One line of `async.jsonl`: what this step trains on, with every token's version."""
        groups = [{"serial": g.serial, "sample": g.scored[0].rollout.sample.id, "start_version": g.start_version,
                   "versions": [_runs(x.rollout.token_versions or []) for x in g.scored]} for g in batch]
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"step": step, "version": step, "groups": groups}) + "\n")

    def save(self, step: int) -> Path:
        """A checkpoint after `step` with the in-flight buffer (no call in flight: drained first)."""
        assert self.call is None, "drain the call in flight before a checkpoint"
        self.s.async_state = self.buffer.state_dict()
        return self.s.save(step)

    def save_done(self, step: int) -> Path | None:
        """The checkpoint of the steps done before `step` (a stop request between steps)."""
        done = self.s.checkpointer.complete()
        if done and self.s.checkpointer.step_of(done[-1]) == step:
            return done[-1]
        if step > self.s.start_step:
            self.drain(PhaseTimer())
            return self.save(step - 1)
        return done[-1] if done else None


def _runs(versions: list[int]) -> list[list[int]]:
    """[[version, count], ...] of consecutive equal versions."""
    runs: list[list[int]] = []
    for v in versions:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return runs


def _truncate_log(path: Path, start_step: int) -> None:
    """Keep the lines of the steps before `start_step` (a resumed run logs the later ones again)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < start_step]
    path.write_text("".join(line + "\n" for line in lines))


def staleness_of(log: Path) -> list[int]:
    """Every trained token's lag (train step - its version), from a run's `async.jsonl`."""
    lags = []
    for line in log.read_text().splitlines():
        row = json.loads(line)
        for group in row["groups"]:
            for runs in group["versions"]:
                lags += [row["version"] - v for v, n in runs for _ in range(n)]
    return lags

