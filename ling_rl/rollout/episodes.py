"""Multi-turn episodes (agentic RL, `environment:`): generate, run the tool calls, feed the results
back as token ids, until the model answers without a call or a limit ends the episode.

    runner = EpisodeRunner(env, recipe.environment, tokenizer, max_prompt_tokens, log_path)
    rollouts = runner.run(rollout_group, samples, n=G, seed_of=..., sampling=(1.0, 1.0, -1),
                          max_tokens=budget, version=step)

Token in, token out: an episode's sequence is its prompt's ids, then for each turn the ids the
engine sampled, then the tool results' ids (`ChatRenderer.tool_result_ids`: the chat template's
tokens for the tool messages and the next generation prompt). What the model sampled is never
decoded and re-tokenized: the learner trains on exactly these ids, with a loss mask that is True
on the sampled tokens only (`Rollout.loss_mask`); tool-result tokens get log-prob 0 and no loss.

Concurrency: each episode's tools (or environment instance) live in a process of its own
(`EnvironmentProcess`); tool calls run on a thread pool while the engines generate the next turns
of other episodes. An engine call is sent as soon as the engines are idle and at least half of the
episodes waiting for them are ready (so one slow tool does not hold back the others, and a burst
of fast tools does not split into one call per episode).

Failures are contained per episode: a malformed call, an unknown tool, a tool that raises or runs
past `environment.tool_timeout_s` gives the model an error result (counted in `EpisodeInfo`); an
environment process that cannot start or crashes fails its episode (`EpisodeInfo.failure`: not
trained on, counted); `FailureMonitor` stops a run where most episodes fail step after step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ling_rl.environments.config import EnvironmentConfig
from ling_rl.environments.spec import ENV_REWARD_COLUMN, ResolvedEnvironment, ToolResult
from ling_rl.rollout.engine import Generation, GenerationRequest
from ling_rl.types import EpisodeInfo, Rollout, Sample



class EnvironmentFailures(RuntimeError):
    """Most episodes' environments failed for `environment.max_failed_steps` steps in a row."""


@dataclass
class Episode:
    """One episode in progress: the sequence so far and what happened."""

    sample: Sample
    """The episode's own sample: its prompt includes `reset()`'s observation, if any."""
    group: int
    index: int
    """Position among the G episodes of its group."""
    budget: int
    """Most tokens after the prompt (sampled and tool results)."""
    turn_budget: int | None = None
    """Most tokens of one model turn (`environment.max_turn_tokens`), or None."""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    routes: np.ndarray | None = None
    turn_start: int = 0
    """Index in `token_ids` where the current model turn starts."""
    texts: list[str] = field(default_factory=list)
    """The text of each model turn (special tokens skipped)."""
    finish_reason: str | None = None
    """None while the episode runs; `stop` when it ended (an answer, a limit, a failure), `length`
    when its token budget ran out inside a model turn."""
    turn_ended: bool = False
    """The tokens absorbed last ended a model turn (EOS): `act` comes next."""
    interruptions: int = 0
    """Asynchronous RL: times a generation call's token budget cut a turn (continued next call)."""
    info: EpisodeInfo = field(default_factory=EpisodeInfo)
    process: Any = None
    """The episode's `EnvironmentProcess` (None once closed)."""

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def request(self, seed: int) -> GenerationRequest:
        return GenerationRequest(prompt_ids=list(self.sample.prompt_ids) + self.token_ids, n=1, seed=seed,
                                 max_tokens=self.max_new_tokens())

    def max_new_tokens(self) -> int:
        """What the next call may generate: the rest of the episode's budget, and of the turn's."""
        left = self.budget - len(self.token_ids)
        if self.turn_budget is not None:
            left = min(left, self.turn_budget - (len(self.token_ids) - self.turn_start))
        return left


class EpisodeRunner:
    """Runs episodes for one environment: their processes, tool calls, renderer and parser."""

    def __init__(self, env: ResolvedEnvironment, cfg: EnvironmentConfig, tokenizer: Any, max_prompt_tokens: int,
                 log_path: str | None = None, threads: int = 16) -> None:
        from ling_rl.environments.parsers import choose_parser
        from ling_rl.environments.rendering import ChatRenderer

        self.env = env
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.log_path = log_path
        self.renderer = ChatRenderer(tokenizer, list(env.schemas))
        self.parse = choose_parser(cfg.tool_parser, getattr(tokenizer, "chat_template", None))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special_tokens = sorted({*getattr(tokenizer, "all_special_tokens", []),
                                      *(str(t) for t in added.values() if getattr(t, "special", False))}, key=len,
                                     reverse=True)
        """Strings the tokenizer turns into special tokens (removed from tool results: `_plain`)."""
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="episode")
        self.engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="episode-engine")
        self._live: dict[int, Episode] = {}
        """Episodes whose process is open, by id (closed with the runner: asynchronous RL keeps
        episodes open across steps)."""

    def close(self) -> None:
        for ep in list(self._live.values()):
            _close(ep)
        self._live.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.engine_thread.shutdown(wait=True, cancel_futures=True)

    # --- asynchronous RL: the k-stale driver's calls, over many episodes at once --------------------

    def new_episode(self, sample: Sample, group: int, index: int, budget: int) -> Episode:
        return Episode(sample=sample, group=group, index=index, budget=self.cfg.max_episode_tokens or budget,
                       turn_budget=self.cfg.max_turn_tokens)

    def begin_all(self, episodes: Sequence[Episode]) -> None:
        list(self.pool.map(self.begin, episodes))

    def act_all(self, episodes: Sequence[Episode]) -> None:
        list(self.pool.map(self.act, episodes))

    def finish_all(self, episodes: Sequence[Episode], version: int) -> list[Rollout]:
        return list(self.pool.map(self.finish, episodes, [version] * len(episodes)))

    def release_others(self, keep: Sequence[Episode]) -> int:
        """Close every open episode not in `keep` (the k-stale buffer dropped its group: stale, or
        cut too often); returns how many were closed."""
        kept = {id(ep) for ep in keep}
        dropped = [ep for key, ep in list(self._live.items()) if key not in kept]
        for ep in dropped:
            self._release(ep)
        return len(dropped)

    # --- one call: every episode of the given prompts, to the end -----------------------------------

    def run(self, rollout: Any, samples: Sequence[Sample], n: int, seed_of: Callable[[int, int, int], int],
            sampling: tuple[float, float, int], max_tokens: int, version: int, group_offset: int = 0) -> list[Rollout]:
        """`n` episodes per sample, generated by `rollout` (a `RolloutGroup`) at `sampling` =
        (temperature, top_p, top_k); `seed_of(group, episode, turn)` seeds each turn's request.
        Returns the rollouts grouped by sample, in order."""
        budget = self.cfg.max_episode_tokens or max_tokens
        episodes = [self.new_episode(s, group_offset + i, j, budget) for i, s in enumerate(samples) for j in range(n)]
        try:
            list(self.pool.map(self.begin, episodes))
            self._drive(rollout, episodes, seed_of, sampling, version)
            return list(self.pool.map(self.finish, episodes, [version] * len(episodes)))
        finally:
            for ep in episodes:
                self._release(ep)

    def _drive(self, rollout: Any, episodes: list[Episode], seed_of: Callable[[int, int, int], int],
               sampling: tuple[float, float, int], version: int) -> None:
        ready = [ep for ep in episodes if not ep.done]
        acting: dict[Future[None], Episode] = {}
        act = self.act
        generating: tuple[Future[list[list[Generation]]], list[Episode]] | None = None
        while ready or acting or generating:
            if generating is None and ready and len(ready) >= len(acting):
                batch, ready = ready, []
                requests = _unique_seeds([ep.request(seed_of(ep.group, ep.index, ep.info.turns)) for ep in batch])
                call = rollout.start_generate(requests, *sampling)
                generating = (self.engine_thread.submit(rollout.finish_generate, call), batch)
            waiting = set(acting) | ({generating[0]} if generating else set())
            finished, _ = wait(waiting, return_when=FIRST_COMPLETED)
            if generating is not None and generating[0] in finished:
                outputs, batch = generating[0].result(), generating[1]  # a RolloutError ends the run, named
                generating = None
                for ep, gens in zip(batch, outputs, strict=True):
                    self.absorb(ep, gens[0], version)
                    if ep.turn_ended:
                        acting[self.pool.submit(act, ep)] = ep
                    elif not ep.done:  # a call's token budget cut the turn (not here: each call may finish it)
                        ready.append(ep)
            for future in finished & set(acting):
                ep = acting.pop(future)
                future.result()
                if not ep.done:
                    ready.append(ep)

    # --- the steps of an episode (each on a pool thread, one at a time per episode) -------------

    def begin(self, ep: Episode) -> None:
        """Start the episode's process and reset its environment; the prompt gains `reset`'s
        observation (appended to the last user message, as TRL does)."""
        from ling_rl.environments.process import EnvironmentFailure, EnvironmentProcess

        ep.process = EnvironmentProcess(self.env, self.cfg.timeout_s, self.cfg.max_tool_output_chars, self.log_path)
        self._live[id(ep)] = ep
        try:
            ep.process.start()
            observation = ep.process.reset({**ep.sample.columns, "prompt": ep.sample.messages})
        except EnvironmentFailure as e:
            self._fail(ep, str(e))
            return
        if observation:
            messages = [dict(m) for m in ep.sample.messages or []]
            if not messages:
                self._fail(ep, "reset() returned an observation but the prompt has no messages to append it to")
                return
            messages[-1]["content"] = f"{messages[-1]['content']}{observation}"
            text, ids = self.renderer.prompt(messages)
            if len(ids) > self.max_prompt_tokens:
                self._fail(ep, f"reset()'s observation made the prompt {len(ids)} tokens, above "
                               f"rollout.max_prompt_tokens={self.max_prompt_tokens}")
                return
            ep.sample = dataclasses.replace(ep.sample, prompt=text, prompt_ids=ids, messages=messages)

    def absorb(self, ep: Episode, gen: Generation, version: int) -> None:
        """Append the tokens one generation call sampled (and their routes, R3): the turn ended
        (EOS: `turn_ended`, `act` next), the episode's token budget ran out (the episode ends), or,
        asynchronous RL, the call's own token budget cut the turn (continued by the next call)."""
        ep.token_ids += gen.token_ids
        ep.logprobs += gen.logprobs
        ep.loss_mask += [True] * len(gen.token_ids)
        ep.versions += [version] * len(gen.token_ids)
        ep.routes = _spliced(ep.routes, gen.routed_experts)
        if gen.finish_reason == "stop":
            ep.turn_ended = True
        elif len(ep.token_ids) >= ep.budget:
            self._close_turn(ep)
            self._end(ep, cut="max_episode_tokens", content=ep.texts[-1], reason="length")
        elif ep.turn_budget is not None and len(ep.token_ids) - ep.turn_start >= ep.turn_budget:
            ep.info.turns_cut += 1
            ep.turn_ended = True
        else:
            ep.interruptions += 1

    def _close_turn(self, ep: Episode) -> str:
        ep.info.turns += 1
        ep.turn_ended = False
        ep.texts.append(_turn_text(self.tokenizer, ep.token_ids[ep.turn_start:]))
        return ep.texts[-1]

    def act(self, ep: Episode) -> None:
        """Parse the turn just generated; run its tool calls and append their results, or end the
        episode (an answer without a call, `max_turns`, the token budget, a dead environment)."""
        parsed = self.parse(self._close_turn(ep))
        if not parsed.calls and not parsed.errors:
            self._end(ep, cut=None, content=parsed.content)
            return
        calls = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in parsed.calls]
        assistant = {"role": "assistant", "content": parsed.content, **({"tool_calls": calls} if calls else {})}
        if ep.info.turns >= self.cfg.max_turns:
            ep.info.messages.append(assistant)
            self._end(ep, cut="max_turns")
            return
        results = [ep.process.call(c.name, c.arguments, self.cfg.tool_timeout_s) for c in parsed.calls]
        results += [ToolResult(name="", content=str({"error": message}), status="bad_call")
                    for message in parsed.errors]
        ep.info.parse_errors += len(parsed.errors)
        for r in results:
            ep.info.tool_calls += 1
            ep.info.outcomes[r.status] = ep.info.outcomes.get(r.status, 0) + 1
            ep.info.infra_errors += bool(r.extra.get("infrastructure"))
            ep.info.tool_seconds += r.seconds
        ep.info.messages.append(assistant)
        tool_messages = [{"role": "tool", "name": r.name, "content": self._plain(r.content)} for r in results]
        if any(r.status == "crashed" for r in results) and self.env.factory_ref is not None:
            self._fail(ep, f"the environment's process died during a tool call: {results[-1].content}")
            return
        if any(r.status == "timeout" for r in results) and self.env.factory_ref is not None:
            # The environment's state died with its process: the model's turn stays, the episode ends.
            ep.info.messages += tool_messages
            self._end(ep, cut="tool_timeout")
            return
        ids = self.renderer.tool_result_ids(tool_messages)
        if len(ep.token_ids) + len(ids) >= ep.budget:
            self._end(ep, cut="max_episode_tokens")
            return
        ep.info.messages += tool_messages
        ep.token_ids += ids
        ep.logprobs += [0.0] * len(ids)
        ep.loss_mask += [False] * len(ids)
        ep.versions += [ep.versions[-1]] * len(ids)
        ep.turn_start = len(ep.token_ids)

    def finish(self, ep: Episode, version: int) -> Rollout:
        """The episode's reward from its environment (`get_reward`), its process closed, as a `Rollout`."""
        from ling_rl.environments.process import EnvironmentFailure

        if ep.info.failure is None and self.env.has_reward and ep.process is not None:
            try:
                ep.info.env_reward = ep.process.get_reward()
            except EnvironmentFailure as e:
                ep.info.failure = f"get_reward() failed: {e}"
        self._release(ep)
        sample = ep.sample
        if self.env.has_reward:
            sample = dataclasses.replace(sample, columns={**sample.columns, ENV_REWARD_COLUMN: ep.info.env_reward})
        return Rollout(sample=sample, group=ep.group, response_ids=list(ep.token_ids), response_text="\n".join(ep.texts),
                       inf_logprobs=list(ep.logprobs), finish_reason=ep.finish_reason or "stop",
                       policy_version=ep.versions[0] if ep.versions else version,
                       routed_experts=ep.routes, token_versions=list(ep.versions) if len(set(ep.versions)) > 1 else None,
                       loss_mask=list(ep.loss_mask), episode=ep.info)

    def _plain(self, content: str) -> str:
        """A tool's text without the tokenizer's special tokens: rendered through the chat template
        they would become the template's own markers (a tool echoing the model's arguments could
        close the tool turn and open a fake one); what the model reads stays the tool's text."""
        while any(token in content for token in self.special_tokens):  # removing one may join another
            for token in self.special_tokens:
                content = content.replace(token, "")
        return content

    def _end(self, ep: Episode, cut: str | None, content: str | None = None, reason: str = "stop") -> None:
        if content is not None:
            ep.info.messages.append({"role": "assistant", "content": content})
        ep.info.cut = cut
        ep.finish_reason = reason

    def _fail(self, ep: Episode, message: str) -> None:
        ep.info.failure = message
        ep.finish_reason = "stop"
        self._release(ep)

    def _release(self, ep: Episode) -> None:
        _close(ep)
        self._live.pop(id(ep), None)


def _close(ep: Episode) -> None:
    if ep.process is not None:
        ep.process.close()
        ep.process = None


def _turn_text(tokenizer: Any, ids: list[int]) -> str:
    """A turn's text as the parser reads it (special tokens skipped, as vLLM's text)."""
    from ling_rl.rollout.engine import generation_texts

    return generation_texts(tokenizer, [ids])[0]


def _spliced(routes: np.ndarray | None, new: Any | None) -> np.ndarray | None:
    """R3 across turns: positions already routed keep the routes of the call that first ran them
    (the turn that sampled them); a later call adds the positions it ran first (its prompt's new
    tool-result tokens and its own turn)."""
    if new is None:
        return routes
    new = np.asarray(new)
    if routes is None:
        return new
    return np.concatenate([routes, new[len(routes):]], axis=0)


def _unique_seeds(requests: list[GenerationRequest]) -> list[GenerationRequest]:
    """Requests of one call with pairwise distinct seeds (n = 1 each): a seed derived for one
    (group, episode, turn) that repeats another's is moved to the next free value, deterministically."""
    used: set[int] = set()
    out = []
    for r in requests:
        seed = r.seed
        while seed in used:
            seed = (seed + 1) % (2**31 - 1)
        used.add(seed)
        out.append(dataclasses.replace(r, seed=seed))
    return out


# --- metrics and failure monitoring ----------------------------------------------------------------

OUTCOMES = ("ok", "error", "unknown_tool", "bad_call", "timeout", "crashed")
CUTS = ("max_turns", "max_episode_tokens", "tool_timeout")


def episode_metrics(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """`agent/*` of a step's episodes: per episode means of turns and tool calls (all, and the
    valid ones: `ok`), totals of each outcome, parse errors, infrastructure errors, tool seconds,
    episodes cut by each limit, and failed episodes."""
    infos = [r.episode for r in rollouts if r.episode is not None]
    if not infos:
        return {}
    n = len(infos)
    out = {"agent/episodes": float(n), "agent/turns_mean": sum(i.turns for i in infos) / n,
           "agent/tool_calls_mean": sum(i.tool_calls for i in infos) / n,
           "agent/turns_cut": float(sum(i.turns_cut for i in infos)),
           "agent/valid_tool_calls_mean": sum(i.outcomes.get("ok", 0) for i in infos) / n,
           "agent/parse_errors": float(sum(i.parse_errors for i in infos)),
           "agent/infra_errors": float(sum(i.infra_errors for i in infos)),
           "agent/tool_seconds": sum(i.tool_seconds for i in infos),
           "agent/failed_episodes": float(sum(i.failure is not None for i in infos))}
    for outcome in OUTCOMES:
        out[f"agent/tool_{outcome}"] = float(sum(i.outcomes.get(outcome, 0) for i in infos))
    for cut in CUTS:
        out[f"agent/cut_{cut}"] = float(sum(i.cut == cut for i in infos))
    return out


class FailureMonitor:
    """Counts steps in a row where more than `max_failed_fraction` of the episodes failed; after
    `max_failed_steps` of them `observe` returns the message the run stops with (the driver saves
    a checkpoint, then raises `EnvironmentFailures`), as `reward_signal` does for rewards."""

    def __init__(self, cfg: EnvironmentConfig, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.streak = 0

    def observe(self, step: int, rollouts: Sequence[Rollout]) -> str | None:
        infos = [r.episode for r in rollouts if r.episode is not None]
        failures = [i.failure for i in infos if i.failure is not None]
        if not infos or len(failures) <= self.cfg.max_failed_fraction * len(infos):
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < self.cfg.max_failed_steps:
            return None
        return (f"environment {self.name}: more than {self.cfg.max_failed_fraction:.0%} of the episodes failed in "
                f"{self.streak} steps in a row (environment.max_failed_steps), up to step {step}; "
                f"{len(failures)} of {len(infos)} in the last, first: {failures[0]}")
