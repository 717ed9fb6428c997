"""Typed records that cross role boundaries (driver <-> rollout <-> reward <-> learner).

Token-aligned tensors in `TrainBatch` are indexed by token position: entry t refers to token
`input_ids[:, t]`, whose log-prob comes from the logits at position t-1. Rows are right-padded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch


@dataclass
class Sample:
    """One prompt with its dataset row."""

    id: str
    """Stable id (dataset row id), used for pass-rate tracking and error messages."""
    prompt: str
    """Prompt text as given to the tokenizer (after any chat template)."""
    prompt_ids: list[int]
    """Tokenized prompt."""
    columns: dict[str, Any] = field(default_factory=dict)
    """The other dataset columns (e.g. `answer`), passed to reward plugins as keyword arguments."""
    messages: list[dict[str, str]] | None = None
    """The conversation rendered into `prompt` (`data.chat_template`: system and user messages as
    `{role, content}`), passed to TRL-style reward plugins; None when the prompt is plain text."""
    source: str = ""
    """The data source the row came from (`data.train` or a `data_mix` key): pass rates are keyed by
    source and id, since ids repeat across sources. Empty for samples not read from a data source."""


@dataclass
class Rollout:
    """One sampled response to a `Sample`."""

    sample: Sample
    group: int
    """Index of the prompt's group within the step's batch."""
    response_ids: list[int]
    response_text: str
    """The text the model wrote (for a multi-turn episode: its turns' text, tool results left out:
    a tool's output is not the model's answer)."""
    inf_logprobs: list[float]
    """Per response token, the log-prob under the inference engine at sampling time (0 for the
    tool-result tokens of an episode)."""
    finish_reason: str
    """`stop` (EOS or stop string) or `length` (hit the token budget)."""
    policy_version: int
    """Learner step whose weights generated this response."""
    routed_experts: Any | None = None
    """Routing replay R3: [positions, MoE layers, top_k] expert ids the engine routed each position
    of prompt + response to, from position 0 (all but the last token: `ling_rl.routing`); None
    when not recorded."""
    token_versions: list[int] | None = None
    """Per response token, the policy version that generated it (asynchronous RL: a partial
    rollout continued under newer weights holds several); None: every token `policy_version`."""
    loss_mask: list[bool] | None = None
    """Multi-turn episodes: per response token, True where the model sampled it, False for the
    tool results fed back to it (never trained on); None: every response token was sampled."""
    episode: EpisodeInfo | None = None
    """Multi-turn episodes (`environment:`): turns, tool calls and their outcomes; None: single-turn."""

    @property
    def failed(self) -> bool:
        """The episode's environment failed (crashed, did not start): the response is not trained on."""
        return self.episode is not None and self.episode.failure is not None


@dataclass
class EpisodeInfo:
    """What happened in one multi-turn episode (ling_rl/rollout/episodes.py): the conversation as
    reward plugins see it and the counts the `agent/*` metrics sum."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    """The completion in TRL's conversational form: assistant messages (with `tool_calls`) and
    tool messages (`{"role": "tool", "name", "content"}`), in order."""
    turns: int = 0
    """Model turns generated."""
    turns_cut: int = 0
    """Turns that reached `environment.max_turn_tokens` without ending (parsed as ended)."""
    tool_calls: int = 0
    """Tool calls run (parsed calls, whatever their outcome)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Tool calls by `ToolStatus` (`ok`, `error`, `unknown_tool`, `bad_call`, `timeout`, `crashed`)."""
    parse_errors: int = 0
    """Malformed tool-call blocks (answered with an error result, counted under `bad_call` too)."""
    infra_errors: int = 0
    """Tool calls whose tool reported an infrastructure failure (e.g. its sandbox did not start)."""
    tool_seconds: float = 0.0
    cut: str | None = None
    """Why the episode ended early: `max_turns`, `max_episode_tokens` or `tool_timeout`; None: the
    model answered without a tool call."""
    failure: str | None = None
    """The environment failed (did not start, crashed, `reset`/`get_reward` failed): the message."""
    env_reward: float | None = None
    """The environment's `get_reward()` at the end (None: it has none, or the episode failed)."""


@dataclass
class ScoredRollout:
    """A rollout with its total reward and the per-plugin breakdown."""

    rollout: Rollout
    reward: float
    """Weighted sum of the plugin scores that are not None."""
    breakdown: dict[str, float | None]
    """Plugin name -> raw score (None: the plugin skipped this sample)."""
    skipped: bool = False
    """True when a required plugin, or every plugin, returned None for it: the sample is not trained on."""


TokenLayout = Literal["positions", "routes"]
"""How a `TrainBatch` field holds its per-token values: `positions`, one [B, T] tensor (or None);
`routes`, a list of [B*T, top_k] tensors, one per MoE layer (or None)."""


def _per_token(layout: TokenLayout, **kwargs: Any) -> Any:
    """A `TrainBatch` field holding one value per token position, in `layout`: every operation
    on the batch's rows or positions (`TrainBatch.map_positions`) reaches it from this marker."""
    return field(metadata={"layout": layout}, **kwargs)


@dataclass
class TrainBatch:
    """What the learner needs for one rollout batch: tensors only, no algorithm names.

    Every field is per token and marked with its layout (`_per_token`): a new field declared the
    same way is selected, trimmed, padded and moved with the others (`map_positions`)."""

    input_ids: torch.Tensor = _per_token("positions")
    """[B, T] prompt + response tokens, right-padded."""
    response_mask: torch.Tensor = _per_token("positions")
    """[B, T] bool: True at response-token positions that are trained on."""
    advantages: torch.Tensor = _per_token("positions")
    """[B, T] per-token advantages (0 outside the response)."""
    unit_ids: torch.Tensor = _per_token("positions")
    """[B, T] long: unit index of each response token within its row (0 outside the response)."""
    inf_logprobs: torch.Tensor = _per_token("positions")
    """[B, T] inference-engine log-probs of the response tokens (0 elsewhere)."""
    old_logprobs: torch.Tensor | None = _per_token("positions", default=None)
    """[B, T] learner log-probs before this batch's updates (None: computed as needed)."""
    routed_experts: list[torch.Tensor] | None = _per_token("routes", default=None)
    """Per MoE layer, [B*T, top_k] expert ids to replay (routing replay; -1: the router chooses)."""
    version_lag: torch.Tensor | None = _per_token("positions", default=None)
    """[B, T] long: per response token, the learner's version minus the version that sampled it
    (asynchronous RL; 0 elsewhere); None: synchronous, every lag 0."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def map_positions(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TrainBatch:
        """A new batch with `fn` applied to every per-token field, each seen as [B, T, ...] (the
        routes' [B*T, top_k] as [B, T, top_k]); `fn` may change B and T (select rows, cut or pad
        positions, move devices). None fields stay None."""
        b, t = self.input_ids.shape

        def apply(name: str, layout: TokenLayout | None) -> Any:
            value = getattr(self, name)
            if value is None:
                return None
            if layout == "positions":
                return fn(value)
            if layout == "routes":
                out = [fn(r.view(b, t, r.shape[-1])) for r in value]
                return [r.reshape(-1, r.shape[-1]) for r in out]
            raise TypeError(f"TrainBatch.{name} has no per-token layout marker (declare it with _per_token)")

        return TrainBatch(**{f.name: apply(f.name, f.metadata.get("layout")) for f in fields(self)})

    def select(self, rows: torch.Tensor | slice) -> TrainBatch:
        """The sub-batch of `rows` (for micro-batches and data-parallel shards)."""
        return self.map_positions(lambda t: t[rows])
