"""A conversation with tools as token ids, turn by turn, the way the episode loop and DFT build it.

An episode's ids are never a re-tokenization of the whole conversation: they are

    prompt(messages)                  the template's rendering with the tool schemas, up to the
                                      generation prompt
    + what the model sampled          (for DFT: assistant_turn_ids(message), the template's
                                      rendering of the turn, up to and including EOS)
    + tool_result_ids(tool_messages)  the template's tokens after a model turn that ended with EOS,
                                      through the next generation prompt
    + what the model sampled ...

`tool_result_ids` is TRL's method (`GRPOTrainer._get_tool_suffix_ids`): render a dummy
[user, assistant with a tool call] conversation with and without the tool messages (the latter
with the generation prompt) and keep the difference. Where the template writes EOS itself (Qwen's
`<|im_end|>` is EOS) the model stops at it and never samples what the template writes after it
(`\\n`), so the prefix is cut after its last EOS and that bridge belongs to the tool result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ling_rl.curriculum.data import DatasetError, render_chat, render_chat_reply, reply_token_ids
from ling_rl.environments.spec import EnvironmentSetupError

_DUMMY_USER = {"role": "user", "content": "dummy"}
_PROBE_ARGUMENT = ("probe_argument_k3x9", "probe_value_q7w2")
_PROBE_RESULT = "probe_result_m5z8"


class ChatRenderer:
    """Renders and tokenizes one conversation's pieces with `tokenizer`'s chat template, showing
    the tools `schemas` (JSON schemas, `{"type": "function", "function": {...}}`)."""

    def __init__(self, tokenizer: Any, schemas: Sequence[dict[str, Any]]) -> None:
        """Checks the template up front: it shows every tool in the prompt and renders a tool call
        and a tool result (else EnvironmentSetupError naming the tokenizer)."""
        self.tokenizer = tokenizer
        self.schemas = [dict(s) for s in schemas]
        self.eos_id: int = tokenizer.eos_token_id
        where = f"the tokenizer's chat template ({getattr(tokenizer, 'name_or_path', '?') or '?'})"
        if not getattr(tokenizer, "chat_template", None):
            raise EnvironmentSetupError(f"environment: {where.replace('chat template', 'tokenizer')} has no chat "
                                        "template; tools need one that shows tool schemas and renders tool calls")
        if self.eos_id is None:
            raise EnvironmentSetupError(f"environment: {where} has no EOS token; an episode's turn ends at EOS")
        self._check_template(where)

    def _template(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.schemas or None, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _ids(self, text: str) -> list[int]:
        # The rendered text carries the template's special tokens already.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _check_template(self, where: str) -> None:
        prompt = self._template([_DUMMY_USER], add_generation_prompt=True)
        missing = [s["function"]["name"] for s in self.schemas if s["function"]["name"] not in prompt]
        if missing:
            raise EnvironmentSetupError(f"environment: {where} does not show the tools in the prompt "
                                        f"(missing: {', '.join(missing)}); it needs tool support (a `tools` section)")
        call = {"type": "function", "function": {"name": "probe_tool_r4t6", "arguments": dict([_PROBE_ARGUMENT])}}
        text = self._template([_DUMMY_USER, {"role": "assistant", "content": "", "tool_calls": [call]},
                               {"role": "tool", "name": "probe_tool_r4t6", "content": _PROBE_RESULT}], False)
        dropped = [what for what, shown in (("the tool call's name", "probe_tool_r4t6"),
                                            ("the tool call's arguments", _PROBE_ARGUMENT[1]),
                                            ("the tool message", _PROBE_RESULT)) if shown not in text]
        if dropped:
            raise EnvironmentSetupError(f"environment: {where} does not render {', '.join(dropped)}; "
                                        "tools need a template that renders tool calls and tool results")

    def prompt(self, messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
        """The episode's prompt: `messages` (system/user) rendered with the tool schemas and the
        generation prompt, and its token ids."""
        text = render_chat(self.tokenizer, messages, tools=self.schemas or None)
        return text, self._ids(text)

    def assistant_turn_ids(self, message: dict[str, Any]) -> list[int]:
        """The tokens the model is trained to sample for the assistant `message` (text and
        `tool_calls`): the template's rendering of the turn after the generation prompt, up to and
        including EOS (appended where the template does not write it), as DFT trains a reply."""
        try:
            _, turn = render_chat_reply(self.tokenizer, [_DUMMY_USER], message, tools=self.schemas or None)
        except DatasetError:
            raise EnvironmentSetupError("environment: the chat template does not render an assistant turn as a "
                                        "continuation of its generation prompt, so its tokens cannot be cut from it")
        return reply_token_ids(self.tokenizer, turn)

    def tool_result_ids(self, tool_messages: list[dict[str, Any]]) -> list[int]:
        """The tokens appended after a model turn that ended with EOS: the `tool` messages
        (`{"role": "tool", "name": ..., "content": ...}`) as the template renders them, through the
        next assistant generation prompt."""
        if not tool_messages or any(m.get("role") != "tool" for m in tool_messages):
            raise ValueError("tool_result_ids takes one or more messages with role 'tool'")
        call = {"type": "function", "function": {"name": tool_messages[0].get("name", ""), "arguments": {}}}
        dummy = [_DUMMY_USER, {"role": "assistant", "content": "", "tool_calls": [call]}]
        prefix = self._ids(self._template(dummy, add_generation_prompt=False))
        full = self._ids(self._template([*dummy, *tool_messages], add_generation_prompt=True))
        if self.eos_id in prefix:
            prefix = prefix[: len(prefix) - prefix[::-1].index(self.eos_id)]
        if full[: len(prefix)] != prefix:
            raise EnvironmentSetupError("environment: the chat template renders a conversation with tool results "
                                        "differently before them, so their tokens cannot be cut from it")
        return full[len(prefix):]
