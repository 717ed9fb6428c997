"""The k-stale generation strategy (`rollout.max_staleness: k >= 1`, docs/async.md) of the driver
loop (`ling_rl/driver/loop.py`): the engines generate while the learner trains.

One RL step n (the learner holds version n: the weights after n updates):

    engines:  ..gen call (version n-1)..|     |sync n|======== gen call (version n) ========|
    learner:  ===== train step n-1 =====|     |      |batch|===== train step n =====|
    driver:   gather() -> score() -> sync() -> launch() -> take_batch() -> train()
                 ^                                                              |
                 +----------- next step: the call launched here is gathered ----+

gather() absorbs the finished call's tokens into their responses (`InflightBuffer`), score() sends
the groups whose G responses all finished to the reward workers (dynamic sampling drops the flat
ones, freeing their slots), sync() moves the weights between two calls (an engine call is never
interrupted), launch() admits new prompts up to (k + 1) x prompts_per_step and continues every
partial response, not waited for; take_batch() gives the oldest groups, none older than n - k.
Without enough scored groups after a gather, more calls are launched and gathered at the same
version (with dynamic sampling at most `curriculum.max_refill_rounds` such rounds once groups were
scored). On eval and checkpoint steps the call in flight is gathered after the learner step, so
the engines evaluate the new weights and the checkpoint holds every partial response
(`InflightBuffer`, ling_rl/rollout/inflight.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ling_rl.curriculum.dynamic_sampling import is_flat
from ling_rl.curriculum.evo_cot import split_groups
from ling_rl.driver import session as sessions
from ling_rl.driver.generation import StepBatch
from ling_rl.learner.group import LearnerError
from ling_rl.rollout.engine import generation_texts
from ling_rl.rollout.group import GenerateCall, RolloutError
from ling_rl.rollout.inflight import CallPlan, InflightBuffer, ReadyGroup
from ling_rl.rollout.requests import request_seed
from ling_rl.tracking import PhaseTimer
from ling_rl.types import ScoredRollout, TrainBatch

ASYNC_LOG = "async.jsonl"
"""Per train step, the groups trained (serial, prompt id, admission version) and the version of
every token of every response (run-length encoded): the record the staleness tests read."""


class AsyncDriverError(RolloutError):
    """The rollout side of the asynchronous driver cannot give the learner a batch (every group
    dropped); a `RolloutError`, so `ling-rl train` prints it as one message."""


@dataclasses.dataclass
class InFlightCall:
    plan: CallPlan
    generate: GenerateCall
    finished_at: float | None = None
    """When the driver saw every engine's result ready: exact when it was waiting (on the learner
    or on this call), else when it next looked (an upper bound of the engines' busy time)."""


class KStaleGeneration:
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
        """Of the syncs `next_batch` made (logged with the step by `after_train`)."""
        # This step's scoring and batch (`next_batch` and `step_metrics` read them).
        self.step_seen: list[ScoredRollout] = []
        self.step_reward_metrics: dict[str, float] = {}
        self.step_groups = self.step_flat = self.refills = 0
        self.batch: list[ReadyGroup] = []
        self.calls = 0
        self.engine_busy_s = 0.0
        self.log_path = s.run_dir / ASYNC_LOG
        _truncate_log(self.log_path, s.start_step)

    # --- the strategy (ling_rl/driver/generation.py) ---------------------------------------------

    def next_batch(self, step: int, timer: PhaseTimer) -> StepBatch:
        """Fill the pipeline, then take the step's batch: the oldest `prompts_per_step` scored
        groups, recorded in `async.jsonl`. With none (every group scored this step was flat), as
        the synchronous strategy's dynamic sampling: those groups marked skipped, so the learner
        skips the update. `dynamic/*` count the groups scored in the step (none: the batch was
        scored in earlier steps)."""
        self.calls = self.fill(step, timer)
        seen, reward_metrics, dyn = self.step_seen, self.step_reward_metrics, {}
        if self.s.recipe.curriculum.dynamic_sampling and seen:
            dyn = {"dynamic/flat_groups_dropped": float(self.step_flat), "dynamic/generated_groups": float(self.step_groups),
                   "dynamic/kept_groups": float(self.step_groups - self.step_flat),
                   "dynamic/refill_rounds": float(self.refills), "dynamic/fallback": 0.0}
        self.step_seen, self.step_reward_metrics, self.step_groups, self.step_flat, self.refills = [], {}, 0, 0, 0
        self.batch = self.buffer.take_batch(step, self.s.recipe.rollout.prompts_per_step)
        if self.s.episodes is not None:  # the episodes of groups the buffer dropped: their processes end
            self.s.episodes.release_others([ep for g in self.buffer.open.values() if g.episodic for ep in g.responses])
        kept = [x for g in self.batch for x in g.scored]
        if not kept:
            if not seen:
                raise AsyncDriverError("async driver: no group to train on and none scored this step")
            dyn["dynamic/fallback"] = 1.0
            kept = [dataclasses.replace(x, skipped=True) for x in seen]
        groups = [{"serial": g.serial, "sample": g.scored[0].rollout.sample.id, "start_version": g.start_version,
                   "versions": [_runs(x.rollout.token_versions or []) for x in g.scored]} for g in self.batch]
        with open(self.log_path, "a") as f:  # what this step trains on, with every token's version
            f.write(json.dumps({"step": step, "version": step, "groups": groups}) + "\n")
        return StepBatch(kept, seen, reward_metrics, dyn, version=step)

    def train(self, batch: TrainBatch) -> dict[str, float]:
        """The learner's step, while the call in flight runs on the engines; notes when that call
        finishes (the engines' busy time) and fails, naming the learner, past its timeout."""
        import ray

        refs = self.s.learner.submit("train_step", ray.put(batch))
        learner_left = set(refs)
        engine_left = set(self.call.generate.refs) if self.call is not None and self.call.finished_at is None else set()
        timeout = float(self.s.learner.timeout)
        deadline = time.monotonic() + timeout
        while learner_left:
            ready, _ = ray.wait(list(learner_left | engine_left), num_returns=1,
                                timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                raise LearnerError(f"learner train_step: no answer from {len(learner_left)} rank(s) within "
                                   f"{timeout:.0f} s (async driver)")
            learner_left.discard(ready[0])
            if ready[0] in engine_left:
                engine_left.discard(ready[0])
                if not engine_left and self.call is not None:
                    self.call.finished_at = time.monotonic()
        return self.s.learner.wait(refs, "train_step")[0]  # a failed rank raises LearnerError here

    def after_train(self, step: int, skipped: bool, timer: PhaseTimer, *, drain: bool,
                    sync: bool) -> dict[str, float]:
        """The learner holds version step + 1 (the same weights if it skipped). The engines get it
        between their next two calls, or now when asked (`drain`: gather the call in flight;
        `sync`: then sync). Returns the sync metrics of the step."""
        self.learner_version = step + 1
        self.weights_changed = self.weights_changed or not skipped
        if drain or sync:
            self.gather(timer)  # the call in flight joins the buffer: checkpointed, or discarded at the end
        metrics, self.sync_metrics = self.sync_metrics, {}
        return {**metrics, **(self.sync(timer) if sync else {})}

    def step_metrics(self, step: int) -> dict[str, float]:
        """`async/*`: staleness of the trained tokens (mean, max, share per lag), partial rollouts,
        interruptions, drops, the buffer, and each role's busy time in this step."""
        k = self.s.recipe.rollout.max_staleness
        scored = [x for g in self.batch for x in g.scored]
        lags = Counter(step - v for x in scored for v in x.rollout.token_versions or [])
        partial = sum(len(set(x.rollout.token_versions or [])) > 1 for x in scored)
        rewards = [x.reward for x in scored if not x.skipped]
        tokens = sum(lags.values())
        counters = self.buffer.take_counters()
        out = {
            "async/staleness_mean": sum(lag * n for lag, n in lags.items()) / max(tokens, 1),
            "async/staleness_max": float(max(lags, default=0)),
            **{f"async/lag{lag}_frac": lags[lag] / max(tokens, 1) for lag in range(k + 1)},
            "async/partial_frac": partial / max(len(scored), 1),
            "async/batch_reward_mean": sum(rewards) / len(rewards) if rewards else 0.0,
            "async/interruptions": float(counters.interruptions),
            "async/dropped_responses": float(counters.dropped_responses),
            "async/stale_dropped_responses": float(counters.stale_dropped_responses),
            "async/admitted_groups": float(counters.admitted_groups),
            "async/calls": float(self.calls),
            "async/open_groups": float(len(self.buffer.open)),
            "async/ready_groups": float(len(self.buffer.ready)),
            "async/engine_busy_s": self.engine_busy_s,
        }
        self.engine_busy_s = 0.0
        return out

    def checkpoint_state(self) -> dict[str, Any]:
        """The in-flight buffer; the call in flight is gathered first (a stop request between
        steps), so the checkpoint holds every partial response."""
        self.gather(PhaseTimer())
        return self.buffer.state_dict()

    # --- generation ------------------------------------------------------------------------------

    def fill(self, step: int, timer: PhaseTimer) -> int:
        """Gather, score, sync and launch until prompts_per_step scored groups can be trained at
        this step (dynamic sampling: or the refill rounds are spent); the last call launched stays
        in flight. Returns the calls launched."""
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
            # Episodes in flight at the checkpoint resumed from start again first; then new prompts,
            # the data mix's random choice seeded per call (several calls may share a step).
            restart, self.buffer.restart = self.buffer.restart[:free], self.buffer.restart[free:]
            fresh = s.next_prompts(free - len(restart), self.buffer.calls) if free > len(restart) else []
            runner = s.episodes
            groups = self.buffer.admit(restart + fresh, self.engine_version, s.curriculum.max_response_tokens(),
                                       new_episode=runner.new_episode if runner is not None else None)
            if runner is not None:  # each episode's process up and its environment reset
                runner.begin_all([ep for g in groups for ep in g.responses])
        plan = self.buffer.plan_call(cfg.token_budget, lambda call, index: request_seed(cfg, call, index))
        if not plan.requests:
            return False
        plan.version = self.engine_version
        self.call = InFlightCall(plan, s.rollout.start_generate(plan.requests, cfg.temperature, cfg.top_p, cfg.top_k))
        return True

    def gather(self, timer: PhaseTimer) -> None:
        """Wait for the call in flight (the learner idles meanwhile) and absorb its tokens."""
        if self.call is None:
            return
        call, self.call = self.call, None
        with timer.phase("wait_generate"):
            # Judged by progress: RolloutError names an engine that fails or makes no step for
            # rollout.stall_timeout_s, however long a progressing call runs.
            outputs = self.s.rollout.finish_generate(call.generate)
        call.finished_at = call.finished_at or time.monotonic()
        runner = self.s.episodes
        self.buffer.absorb(call.plan, outputs, call.plan.version, runner.absorb if runner is not None else None)
        self.engine_busy_s += call.finished_at - call.generate.started
        if runner is not None:  # the turns that ended call their tools now, between two engine calls
            with timer.phase("tools"):
                runner.act_all([ep for g in self.buffer.open.values() if g.episodic for ep in g.responses
                                if ep.turn_ended])

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

    # --- scoring ---------------------------------------------------------------------------------

    def score(self, timer: PhaseTimer) -> None:
        """Score the groups whose G responses all finished; the non-flat ones (all, without dynamic
        sampling) become ready. The step's first scoring gives its reward metrics (as the
        synchronous strategy's first round: the policy as sampled)."""
        s = self.s
        runner = s.episodes
        rollouts = self.buffer.pop_completed(
            lambda ids: generation_texts(s.tokenizer, ids),
            (lambda eps: runner.finish_all(eps, self.engine_version)) if runner is not None else None)
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

