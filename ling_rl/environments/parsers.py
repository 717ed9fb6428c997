"""Tool-call parsers: the model's text of one turn -> its prose, its tool calls, and one error per
malformed call (the model reads each error as a tool result). One parser per chat-template
convention, in the `TOOL_PARSERS` registry; `environment.tool_parser: auto` picks the parser whose
marker the chat template writes.

Parsing is linear in the text (`str.find` loops and one `json.loads` per block, no backtracking
regular expressions): a model's output is untrusted and may be long.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

from ling_rl.environments.spec import EnvironmentSetupError
from ling_rl.plugins import PluginLoadError, is_path_name, load_object
from ling_rl.registry import Registry


@dataclass(frozen=True)
class ToolCall:
    """One well-formed call: the tool's name and its keyword arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedTurn:
    """A model turn split into prose and calls."""

    content: str
    """The text outside tool-call blocks, stripped of surrounding whitespace."""
    calls: list[ToolCall] = field(default_factory=list)
    """The well-formed calls, in order."""
    errors: list[str] = field(default_factory=list)
    """One message per malformed block, in order, written for the model to read."""


class ToolParser(Protocol):
    """Called with the text of one model turn."""

    template_marker: str
    """Text a chat template of this convention contains (`auto` looks for it)."""

    def __call__(self, text: str) -> ParsedTurn: ...


TOOL_PARSERS: Registry[ToolParser] = Registry("tool-call parser")


class HermesParser:
    """Hermes / Qwen convention: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any
    number per turn. `arguments` may also be a JSON string of an object (some models emit that),
    or absent (a call without arguments)."""

    template_marker = "<tool_call>"
    open_tag, close_tag = "<tool_call>", "</tool_call>"

    def __call__(self, text: str) -> ParsedTurn:
        prose: list[str] = []
        calls: list[ToolCall] = []
        errors: list[str] = []
        pos = 0
        while True:
            start = text.find(self.open_tag, pos)
            if start < 0:
                prose.append(text[pos:])
                break
            prose.append(text[pos:start])
            body_start = start + len(self.open_tag)
            end = text.find(self.close_tag, body_start)
            if end < 0:
                errors.append(f"malformed tool call: {self.open_tag} without {self.close_tag}")
                break
            call = self._call(text[body_start:end])
            if isinstance(call, ToolCall):
                calls.append(call)
            else:
                errors.append(f"malformed tool call: {call}")
            pos = end + len(self.close_tag)
        return ParsedTurn(content="".join(prose).strip(), calls=calls, errors=errors)

    @staticmethod
    def _call(body: str) -> ToolCall | str:
        """The call in one block, or what is wrong with it."""
        obj, error = _json(body, "the block")
        if error is not None:
            return error
        if not isinstance(obj, dict):
            return f'expected a JSON object {{"name": ..., "arguments": {{...}}}}, got {_json_type(obj)}'
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            return 'no "name" (a non-empty string)'
        arguments = obj.get("arguments", {})
        if isinstance(arguments, str):
            arguments, error = _json(arguments, '"arguments" (a string)')
            if error is not None:
                return f"tool {name!r}: {error}"
        if not isinstance(arguments, dict):
            return f'tool {name!r}: "arguments" must be a JSON object, got {_json_type(arguments)}'
        return ToolCall(name=name, arguments=arguments)


def _json(text: str, what: str) -> tuple[Any, str | None]:
    """(the JSON value of `text`, None), or (None, what is wrong with it)."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"{what} is not valid JSON ({e.msg} at character {e.pos})"
    except RecursionError:  # the C decoder recurses once per nesting level
        return None, f"{what} is nested too deeply"


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


TOOL_PARSERS.add("hermes", HermesParser())


def _checked(parser: Callable[[str], Any], name: str) -> Callable[[str], ParsedTurn]:
    """The user's parser, whose failure (an exception, or not a `ParsedTurn` back) stops the run with
    one line naming `environment.tool_parser`: a bug in the user's code, not the model's output."""

    def parse(text: str) -> ParsedTurn:
        try:
            parsed = parser(text)
        except Exception as e:
            raise EnvironmentSetupError(f"environment.tool_parser {name!r} raised {type(e).__name__}: {e} "
                                        f"(on a model turn of {len(text)} characters)") from e
        if not isinstance(parsed, ParsedTurn):
            raise EnvironmentSetupError(f"environment.tool_parser {name!r} returned a {type(parsed).__name__}, "
                                        "not a ling_rl.environments.parsers.ParsedTurn")
        return parsed

    return parse


def choose_parser(name: str, chat_template: str | None) -> Callable[[str], ParsedTurn]:
    """The parser `environment.tool_parser` names: a registered one, or the user's own by
    `path/to/file.py:name` / `pkg.module:name` (a callable: turn text -> `ParsedTurn`); `auto`: the
    registered parser whose marker the chat template contains."""
    if name != "auto" and is_path_name(name) and name not in TOOL_PARSERS:
        # The user's own parser, by file or dotted path (as reward plugins and tools are named).
        try:
            parser, _ = load_object(name, f"environment.tool_parser {name!r}")
        except PluginLoadError as e:
            raise EnvironmentSetupError(str(e)) from None
        if not callable(parser):
            raise EnvironmentSetupError(f"environment.tool_parser {name!r}: a {type(parser).__name__}, not callable "
                                        "(a parser takes the text of one model turn and returns a ParsedTurn)")
        return _checked(parser, name)
    if name != "auto":
        if name not in TOOL_PARSERS:
            raise EnvironmentSetupError(f"environment.tool_parser: unknown tool-call parser {name!r}; "
                             f"available: auto, {', '.join(TOOL_PARSERS.names())}")
        return TOOL_PARSERS.get(name)
    for parser_name in TOOL_PARSERS:
        parser = TOOL_PARSERS.get(parser_name)
        if chat_template and parser.template_marker in chat_template:
            return parser
    raise EnvironmentSetupError("environment.tool_parser: `auto` found no known tool-call convention in the chat template "
                     f"(looked for {', '.join(repr(TOOL_PARSERS.get(n).template_marker) for n in TOOL_PARSERS)}"
                     f"{'' if chat_template else '; the tokenizer has no chat template'}); "
                     f"name one of: {', '.join(TOOL_PARSERS.names())}")
