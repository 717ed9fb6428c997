"""The asynchronous driver's in-flight buffer: every group admitted and not yet trained on.

    admit(samples, version)      new groups (G empty responses each), within the capacity
        |
    plan_call(call, chunk)       one engine request per group not started (n = G) and one per
        |                        partial response (n = 1, prompt + the response so far)
    absorb(plan, outputs, v)     append the new tokens, their behaviour log-probs and version v;
        |                        a response cut by the chunk is interrupted (continued next call)
    pop_completed()              groups whose G responses all finished -> rollouts to score
        |
    add_ready(...) / take_batch(version, n)   scored groups, oldest first, never staler than k

Pure Python (no Ray, no vLLM): the driver (`ling_rl/driver/kstale.py`) makes the engine calls.

Version: the number of RL steps the learner has taken when the weights were made (the weights
synced into the engines before step n's generation call are version n). A token's lag at train
step n is n - its version; the buffer never hands out a group whose oldest token lags more than
`max_staleness`, and drops (and counts) groups that could no longer be trained within it.

Admission: at most `(max_staleness + 1) * prompts_per_step` groups are open (admitted and not yet
trained or dropped), the capacity of AReaL's staleness manager: consumed oldest first, B groups a
step, a group admitted at version v is trained by step v + k when it completes in time; the
config check (`rollout.token_budget`) makes every response complete within k calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ling_rl.rollout.engine import Generation, GenerationRequest
from ling_rl.rollout.episodes import Episode
from ling_rl.types import EpisodeInfo, Rollout, Sample, ScoredRollout


class InflightError(RuntimeError):
    """The in-flight buffer was given output it cannot match to its requests."""


@dataclass
class Response:
    """One response being generated, possibly over several calls (policy versions)."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    """Behaviour log-prob of each token, under the version that sampled it."""
    versions: list[int] = field(default_factory=list)
    """Policy version that sampled each token."""
    interruptions: int = 0
    """Times the token budget cut it (each followed by a continuation)."""
    finish_reason: str | None = None
    """`stop` or `length` (max tokens reached) once finished; None while running."""


@dataclass
class Group:
    """The G responses to one prompt, admitted together."""

    serial: int
    """Admission order over the whole run (the group id in rollouts and logs)."""
    sample: Sample
    start_version: int
    """Version of the generation call that admitted it: its oldest token's version."""
    max_tokens: int
    responses: list[Any]
    """`Response`s, or, in agentic runs, `Episode`s (ling_rl/rollout/episodes.py): the same fields
    (token ids, log-probs, versions, interruptions, finish reason) plus the episode's own prompt,
    loss mask and tool results; an episode between two turns waits for its tool calls (`turn_ended`)."""

    @property
    def episodic(self) -> bool:
        return isinstance(self.responses[0], Episode)

    @property
    def finished(self) -> bool:
        return all(r.finish_reason is not None for r in self.responses)

    @property
    def started(self) -> bool:
        return any(r.finish_reason is not None or r.token_ids for r in self.responses)


@dataclass
class ReadyGroup:
    """A completed, scored group waiting for a train batch."""

    serial: int
    start_version: int
    scored: list[ScoredRollout]


@dataclass
class CallPlan:
    """One generation call: its requests and, per request, (group serial, response indices)."""

    requests: list[GenerationRequest]
    targets: list[tuple[int, list[int]]]
    version: int = -1
    """Engine version the call runs at (set by the driver at launch)."""

    @property
    def responses(self) -> int:
        return sum(len(indices) for _, indices in self.targets)


@dataclass
class Counters:
    """Events since the driver last read them (`take_counters`)."""

    interruptions: int = 0
    dropped_responses: int = 0
    """Responses dropped with their group for more than `max_interruptions` interruptions."""
    stale_dropped_responses: int = 0
    """Responses dropped with their group because they could no longer be trained within the bound."""
    admitted_groups: int = 0


class InflightBuffer:
    def __init__(self, group_size: int, prompts_per_step: int, max_staleness: int,
                 max_interruptions: int | None) -> None:
        if max_staleness < 1:
            raise ValueError(f"the in-flight buffer is for rollout.max_staleness >= 1, got {max_staleness}")
        self.group_size = group_size
        self.prompts_per_step = prompts_per_step
        self.max_staleness = max_staleness
        self.max_interruptions = max_interruptions
        self.open: dict[int, Group] = {}
        """Admitted groups still generating, by serial."""
        self.ready: list[ReadyGroup] = []
        """Scored groups waiting for a batch, in completion order."""
        self.next_serial = 0
        self.restart: list[Sample] = []
        """Prompts of episodes in flight at the checkpoint resumed from: admitted first (k-stale driver)."""
        self.calls = 0
        """Generation calls planned so far (the seed stream of each call)."""
        self.counters = Counters()

    # --- admission -------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Most groups open at once: (k + 1) batches."""
        return (self.max_staleness + 1) * self.prompts_per_step

    def free_slots(self) -> int:
        return max(self.capacity - len(self.open) - len(self.ready), 0)

    def admit(self, samples: list[Sample], version: int, max_tokens: int,
              new_episode: Callable[[Sample, int, int, int], Episode] | None = None) -> list[Group]:
        """Open a group per sample, generated from `version` on; more than `free_slots()` is an error.
        `new_episode(sample, serial, index, max_tokens)`: agentic runs, the group's G episodes."""
        if len(samples) > self.free_slots():
            raise InflightError(f"admitting {len(samples)} groups with {self.free_slots()} free slots "
                                f"(capacity {self.capacity} = (rollout.max_staleness + 1) x rollout.prompts_per_step)")
        groups = []
        for sample in samples:
            responses = [Response() if new_episode is None else new_episode(sample, self.next_serial, j, max_tokens)
                         for j in range(self.group_size)]
            group = Group(self.next_serial, sample, version, max_tokens, responses)
            self.open[group.serial] = group
            self.next_serial += 1
            groups.append(group)
        self.counters.admitted_groups += len(groups)
        return groups

    # --- generation calls ------------------------------------------------------------------------

    def plan_call(self, chunk: int | None, seed_of: Callable[[int, int], int]) -> CallPlan:
        """The requests of the next call: a group not started yet is one request of G samples (as
        the synchronous loop's); each unfinished response of a started group is one request of one
        sample whose prompt is the prompt plus the response so far (a continuation: nothing is
        regenerated). Each gets at most `chunk` new tokens (None: up to its max tokens).
        `seed_of(call, index)` gives request `index` its seed; calls never share a seed stream."""
        call, self.calls = self.calls, self.calls + 1
        requests, targets = [], []
        for group in self.open.values():
            if not group.started and not group.episodic:
                todo = [list(range(self.group_size))]
            else:  # an episode has its own prompt (its reset) and waits between turns for its tools
                todo = [[i] for i, r in enumerate(group.responses)
                        if r.finish_reason is None and not getattr(r, "turn_ended", False)]
            for indices in todo:
                r = group.responses[indices[0]]
                done = r.token_ids
                if group.episodic:  # the rest of the episode's budget and of its turn's
                    prompt, budget = r.sample.prompt_ids, r.max_new_tokens()
                else:
                    prompt, budget = group.sample.prompt_ids, group.max_tokens - len(done)
                requests.append(GenerationRequest(prompt_ids=list(prompt) + list(done), n=len(indices),
                                                  seed=seed_of(call, len(requests)),
                                                  max_tokens=budget if chunk is None else min(chunk, budget)))
                targets.append((group.serial, indices))
        return CallPlan(requests, targets)

    def absorb(self, plan: CallPlan, outputs: list[list[Generation]], version: int,
               absorb_episode: Callable[[Episode, Generation, int], None] | None = None) -> None:
        """Append a call's tokens (sampled at `version`) to their responses. A response that hit
        the call's max tokens before its own is interrupted; past `max_interruptions` its group
        is dropped. Output for a group dropped meanwhile is discarded. Episodes take their tokens
        through `absorb_episode` (`EpisodeRunner.absorb`: a turn's end, the budget, or a cut)."""
        if len(outputs) != len(plan.requests):
            raise InflightError(f"a generation call of {len(plan.requests)} requests returned {len(outputs)} results")
        for request, (serial, indices), gens in zip(plan.requests, plan.targets, outputs, strict=True):
            if len(gens) != len(indices):
                raise InflightError(f"group {serial}: a request for {len(indices)} responses returned {len(gens)}")
            group = self.open.get(serial)
            if group is None:
                continue
            for i, gen in zip(indices, gens, strict=True):
                r = group.responses[i]
                if isinstance(r, Episode):
                    if absorb_episode is None:
                        raise InflightError(f"group {serial} holds episodes but absorb was given no absorb_episode")
                    before = r.interruptions
                    absorb_episode(r, gen, version)
                    self.counters.interruptions += r.interruptions - before
                    continue
                r.token_ids += gen.token_ids
                r.logprobs += gen.logprobs
                r.versions += [version] * len(gen.token_ids)
                if gen.finish_reason == "stop" or len(r.token_ids) >= group.max_tokens:
                    r.finish_reason = gen.finish_reason
                elif len(gen.token_ids) < request.max_tokens:
                    raise InflightError(f"group {serial}: a generation ended after {len(gen.token_ids)} of "
                                        f"{request.max_tokens} tokens with reason {gen.finish_reason!r}")
                else:
                    r.interruptions += 1
                    self.counters.interruptions += 1
            if self.max_interruptions is not None and any(r.interruptions > self.max_interruptions
                                                          for r in group.responses):
                del self.open[serial]
                self.counters.dropped_responses += self.group_size

    def pop_completed(self, decode: Callable[[list[list[int]]], list[str]],
                      finish_episodes: Callable[[list[Episode]], list[Rollout]] | None = None) -> list[Rollout]:
        """Rollouts of every group whose G responses finished (removed from the open groups);
        `decode` turns whole responses into their texts; `finish_episodes` (`EpisodeRunner.finish_all`)
        closes finished episodes into rollouts."""
        done = [g for g in self.open.values() if g.finished]
        episodic = [g for g in done if g.episodic]
        done = [g for g in done if not g.episodic]
        finished: list[Rollout] = []
        if episodic:
            if finish_episodes is None:
                raise InflightError("groups of episodes finished but pop_completed was given no finish_episodes")
            for group in episodic:
                del self.open[group.serial]
            finished = finish_episodes([ep for g in episodic for ep in g.responses])
        responses = [r for g in done for r in g.responses]
        texts = iter(decode([r.token_ids for r in responses]) if responses else [])
        rollouts = []
        for group in done:
            del self.open[group.serial]
            for r in group.responses:
                rollouts.append(Rollout(
                    sample=group.sample, group=group.serial, response_ids=list(r.token_ids), response_text=next(texts),
                    inf_logprobs=list(r.logprobs), finish_reason=str(r.finish_reason),
                    policy_version=r.versions[0] if r.versions else group.start_version,
                    token_versions=list(r.versions)))
        return finished + rollouts

    # --- train batches ---------------------------------------------------------------------------

    def add_ready(self, serial: int, start_version: int, scored: list[ScoredRollout]) -> None:
        self.ready.append(ReadyGroup(serial, start_version, scored))

    def take_batch(self, version: int, n: int) -> list[ReadyGroup]:
        """For the train step at learner `version`: drop the groups that could no longer be trained
        within the bound (ready ones older than version - k, open ones older than version + 1 - k:
        they can only be trained from the next step on), then take the `n` oldest ready groups."""
        k = self.max_staleness
        stale = [g for g in self.ready if g.start_version < version - k]
        self.ready = [g for g in self.ready if g.start_version >= version - k]
        late = [s for s, g in self.open.items() if g.start_version < version + 1 - k]
        for serial in late:
            del self.open[serial]
        self.counters.stale_dropped_responses += self.group_size * (len(stale) + len(late))
        self.ready.sort(key=lambda g: (g.start_version, g.serial))
        batch, self.ready = self.ready[:n], self.ready[n:]
        for g in batch:
            oldest = min((min(s.rollout.token_versions or [s.rollout.policy_version]) for s in g.scored), default=version)
            if version - oldest > k:
                raise InflightError(f"group {g.serial} holds a token of version {oldest} at learner version {version}: "
                                    f"staleness {version - oldest} > rollout.max_staleness {k}")
        return batch

    def take_counters(self) -> Counters:
        counters, self.counters = self.counters, Counters()
        return counters

    # --- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable: open groups with their partial responses, ready groups with their
        scores, and the counters that keep seeds and serials unique after a resume."""
        return {
            "next_serial": self.next_serial,
            "calls": self.calls,
            "open": [{**_sample_fields(g.sample), "serial": g.serial, "start_version": g.start_version,
                      "max_tokens": g.max_tokens, "responses": [dataclasses.asdict(r) for r in g.responses]}
                     for g in self.open.values() if not g.episodic],
            # An episode's environment lives in a process that no checkpoint can hold: its prompt is
            # started again after a resume (`restart`), its partial turns discarded.
            "restart": [dataclasses.asdict(g.sample) for g in self.open.values() if g.episodic],
            "ready": [{"serial": g.serial, "start_version": g.start_version,
                       "scored": [_scored_fields(s) for s in g.scored]} for g in self.ready],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restart = [_sample(fields) for fields in state.get("restart", [])]
        self.next_serial = int(state["next_serial"])
        self.calls = int(state["calls"])
        self.open = {}
        for g in state["open"]:
            group = Group(int(g["serial"]), _sample(g["sample"]), int(g["start_version"]), int(g["max_tokens"]),
                          [Response(**r) for r in g["responses"]])
            self.open[group.serial] = group
        self.ready = [ReadyGroup(int(g["serial"]), int(g["start_version"]), [_scored(s) for s in g["scored"]])
                      for g in state["ready"]]


def _sample_fields(sample: Sample) -> dict[str, Any]:
    return {"sample": dataclasses.asdict(sample)}


def _sample(fields: dict[str, Any]) -> Sample:
    return Sample(**fields)


def _scored_fields(s: ScoredRollout) -> dict[str, Any]:
    r = s.rollout
    if r.routed_experts is not None:
        raise InflightError("rollouts with routed experts (routing replay r3) cannot be checkpointed in flight")
    rollout = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name not in ("sample", "routed_experts")}
    if r.episode is not None:
        rollout["episode"] = dataclasses.asdict(r.episode)
    return {"rollout": rollout, "sample": dataclasses.asdict(r.sample), "reward": s.reward,
            "breakdown": dict(s.breakdown), "skipped": s.skipped}


def _scored(fields: dict[str, Any]) -> ScoredRollout:
    values = dict(fields["rollout"])
    if values.get("episode") is not None:
        values["episode"] = EpisodeInfo(**values["episode"])
    rollout = Rollout(sample=_sample(fields["sample"]), **values)
    return ScoredRollout(rollout=rollout, reward=float(fields["reward"]), breakdown=dict(fields["breakdown"]),
                         skipped=bool(fields["skipped"]))
