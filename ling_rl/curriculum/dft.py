"""DFT, decoupled fine-tuning (Ling 2.0, 4.1): the SFT warm start of a recipe.

One model learns two modes selected by the prompt: "detailed think off" -> the plain answer,
"detailed think on" -> `<think>solution</think><answer>answer</answer>`. The loss is the
cross-entropy of the response tokens only. Evo-CoT RL then runs in the think-off (instant) mode,
so the RL prompt template should be `think_off_template`.

A row may instead hold a multi-turn trace with tool calls (`messages_key`, TRL's conversational
form): it trains on the assistant turns only, as token ids built the way the episode loop builds an
episode (ling_rl/environments/rendering.py), so the warm start imitates exactly what RL samples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from ling_rl.curriculum.data import DatasetError, chat_messages, render_chat_reply, reply_token_ids
from ling_rl.schema import Section
from ling_rl.types import TrainBatch


class DFTConfig(Section):
    """The `dft:` section: an SFT warm start on the learner before RL."""

    enabled: bool = False
    """Run DFT before the first RL step (skipped when resuming from an RL checkpoint)."""

    data: str | None = None
    """Dataset with prompt, answer and solution columns (None: `data.train`)."""

    steps: int = Field(default=100, ge=1)
    """Optimizer steps."""

    batch_size: int = Field(default=32, ge=1)
    """Examples per step."""

    lr: float = Field(default=1e-3, gt=0)
    """Constant learning rate of DFT's own AdamW (the RL optimizer starts fresh after it)."""

    think_on_fraction: float = Field(default=0.5, ge=0, le=1)
    """Share of examples in think-on mode."""

    think_off_template: str = "detailed think off\nQuestion: {prompt}\nAnswer:"
    """Prompt of the instant mode; `{prompt}` is the prompt column."""

    think_on_template: str = "detailed think on\nQuestion: {prompt}\nAnswer:"
    """Prompt of the thinking mode."""

    solution_key: str = "solution"
    """Column with the step-by-step solution (think-on responses, and think-off ones with
    `think_off_response: solution`)."""

    think_off_response: Literal["answer", "solution"] = "answer"
    """What the think-off (instant) mode answers: `answer`, the answer column alone; `solution`,
    the solution column as plain sentences without tags (Ling's instant mode still writes its
    reasoning, briefly; the solution should then state its final answer, e.g. "The answer is 7.")."""

    messages_key: str = "messages"
    """Column with a multi-turn trace in TRL's conversational form: system/user messages, then
    assistant turns (text and `tool_calls`) each followed by its `tool` results, ending with an
    assistant turn. A row where it is set trains on the assistant turns only (no think modes):
    prompt ids from the chat template with the tool schemas, each assistant turn's ids through EOS
    (trained), each run of tool results' ids (not trained), as the episode loop builds an episode.
    Needs `data.chat_template`. Rows without it are prompt/answer/solution rows as above."""

    seed: int = 0
    """Order of examples and choice of modes."""

    @model_validator(mode="after")
    def _templates(self) -> DFTConfig:
        for name in ("think_off_template", "think_on_template"):
            if "{prompt}" not in getattr(self, name):
                raise ValueError(f"{name} must contain {{prompt}}")
        return self


def response_text(row: dict[str, Any], think: bool, cfg: DFTConfig, answer_key: str) -> str:
    answer = str(row[answer_key])
    if think:
        return f" <think>{row[cfg.solution_key]}</think><answer>{answer}</answer>"
    return f" {row[cfg.solution_key]}" if cfg.think_off_response == "solution" else f" {answer}"


ROLES = ("system", "user", "assistant", "tool")


def check_trace(messages: Any, where: str) -> int:
    """The index of the first assistant turn of a valid trace; DatasetError naming `where` and the
    message otherwise. Valid: system/user messages (at least one user), then assistant turns, each
    followed by one or more tool results except the last, which ends the trace (as an episode ends)."""
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: not a non-empty list of messages")
    first = None
    for k, m in enumerate(messages):
        at = f"{where}[{k}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise DatasetError(f"{at}: unknown role {role!r} (roles: {', '.join(ROLES)})" if isinstance(m, dict)
                               else f"{at}: a {type(m).__name__}, not a message (a dict with role and content)")
        calls = m.get("tool_calls")
        if not isinstance(m.get("content"), str) and not (role == "assistant" and calls and m.get("content") is None):
            raise DatasetError(f"{at}: {role} message without text content")
        if calls is not None and (role != "assistant" or not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
                and isinstance(c["function"].get("arguments", {}), dict | str) for c in calls)):
            raise DatasetError(f"{at}: tool_calls must be an assistant's list of "
                               '{"type": "function", "function": {"name": ..., "arguments": {...}}}')
        before = messages[k - 1]["role"] if k else None
        if role in ("system", "user") and first is not None:
            raise DatasetError(f"{at}: a {role} message after the first assistant turn (a trace is one prompt, "
                               "then the assistant's turns and tool results)")
        if role == "tool" and before not in ("assistant", "tool"):
            raise DatasetError(f"{at}: a tool message before any assistant call")
        if role == "assistant":
            if before == "assistant":
                raise DatasetError(f"{at}: an assistant turn right after another; a turn that does not end the "
                                   "trace is followed by the results of its tool calls")
            if first is None:
                if not any(p["role"] == "user" for p in messages[:k]):
                    raise DatasetError(f"{at}: no user message before the first assistant turn")
                first = k
    if first is None:
        raise DatasetError(f"{where}: no assistant turn")
    if messages[-1]["role"] != "assistant":
        raise DatasetError(f"{where}: ends with a {messages[-1]['role']} message, not the assistant's last turn")
    return first


def trace_example(messages: list[dict[str, Any]], first: int, renderer: Any) -> tuple[list[int], list[int], list[bool]]:
    """(prompt ids, response ids, response mask) of a checked trace: the renderer's prompt of the
    messages before `first`, then each assistant turn's ids (mask True) and each run of tool results'
    ids (mask False), as the episode loop appends them."""
    _, prompt = renderer.prompt(messages[:first])
    response: list[int] = []
    mask: list[bool] = []
    k = first
    while k < len(messages):
        if messages[k]["role"] == "assistant":
            ids, trained = renderer.assistant_turn_ids(messages[k]), True
            k += 1
        else:
            end = k
            while end < len(messages) and messages[end]["role"] == "tool":
                end += 1
            ids, trained = renderer.tool_result_ids(messages[k:end]), False
            k = end
        response += ids
        mask += [trained] * len(ids)
    return prompt, response, mask


class DFTData:
    """Tokenized DFT examples, served in seeded random batches.

    With `chat_template` (`data.chat_template`), the prompt is the mode's template as the user's
    message (after `system_prompt`, if any) rendered as RL prompts are, and the response is the
    chat template's rendering of the assistant's turn, up to and including the EOS token (appended
    when the template's turn does not contain it), so the model learns to stop where generation stops.

    A row with a trace (`cfg.messages_key`) is tokenized by `ling_rl.environments.rendering.ChatRenderer`
    with `tool_schemas` (the environment's, `ResolvedEnvironment.schemas`; None: no tools), `system_prompt` put first
    when the trace has no system message (as RL prompts get it); only its assistant turns are trained.
    """

    def __init__(self, rows: list[dict[str, Any]], cfg: DFTConfig, tokenizer: Any, prompt_key: str, answer_key: str,
                 source: str, *, chat_template: bool = False, system_prompt: str | None = None,
                 tool_schemas: Sequence[dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.examples: list[tuple[list[int], list[int]]] = []
        """(prompt ids, response ids) of each example."""
        self.response_masks: list[list[bool]] = []
        """Per example, which response tokens are trained: all of a prompt/answer row's; a trace's
        assistant turns, not its tool results."""
        renderer = None
        for i, row in enumerate(rows):
            if row.get(cfg.messages_key) is not None:
                where = f"{source}: row {i}: {cfg.messages_key}"
                if not chat_template:
                    raise DatasetError(f"{where}: a multi-turn trace needs data.chat_template: true")
                messages = row[cfg.messages_key]
                first = check_trace(messages, where)
                if system_prompt is not None and not any(m["role"] == "system" for m in messages[:first]):
                    messages, first = [{"role": "system", "content": system_prompt}, *messages], first + 1
                if renderer is None:
                    from ling_rl.environments.rendering import ChatRenderer

                    renderer = ChatRenderer(tokenizer, tool_schemas or ())
                prompt, response, mask = trace_example(messages, first, renderer)
                self.examples.append((prompt, response))
                self.response_masks.append(mask)
                continue
            for key in (prompt_key, answer_key, cfg.solution_key):
                if row.get(key) is None:
                    raise DatasetError(f"{source}: row {i}: DFT needs column {key!r}; columns: {sorted(row)}")
            think = self.rng.random() < cfg.think_on_fraction
            template = cfg.think_on_template if think else cfg.think_off_template
            prompt_text, reply = template.format(prompt=row[prompt_key]), response_text(row, think, cfg, answer_key)
            if chat_template:
                # The reply's leading space follows "Answer:" in a plain prompt; a chat message has none.
                prompt_text, reply = render_chat_reply(tokenizer, chat_messages(prompt_text, system_prompt), reply.lstrip())
            response = reply_token_ids(tokenizer, reply)
            self.examples.append((tokenizer.encode(prompt_text, add_special_tokens=False), response))
            self.response_masks.append([True] * len(response))

    def batch(self, pad_id: int) -> TrainBatch:
        chosen = [self.rng.randrange(len(self.examples)) for _ in range(self.cfg.batch_size)]
        t = max(sum(map(len, self.examples[j])) for j in chosen)
        ids = torch.full((len(chosen), t), pad_id, dtype=torch.long)
        mask = torch.zeros(len(chosen), t, dtype=torch.bool)
        for i, j in enumerate(chosen):
            p, r = self.examples[j]
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, len(p) : len(p) + len(r)] = torch.tensor(self.response_masks[j])
        zeros = torch.zeros(len(chosen), t)
        return TrainBatch(input_ids=ids, response_mask=mask, advantages=zeros, unit_ids=torch.zeros_like(ids),
                          inf_logprobs=zeros)
