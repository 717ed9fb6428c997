"""Tool-call parsing (ling_rl/environments/parsers.py): well-formed calls, one error per malformed
block, linear time on long hostile text, and the `auto` choice by chat template."""

from __future__ import annotations

import time

import pytest

from ling_rl.environments.parsers import TOOL_PARSERS, HermesParser, ToolCall, choose_parser
from ling_rl.models.tiny import CHAT_TEMPLATE

hermes = HermesParser()


def test_calls_and_prose() -> None:
    text = ('Let me compute.\n<tool_call>{"name": "calculator", "arguments": {"expression": "4821*37"}}</tool_call>'
            ' and <tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call>\n')
    turn = hermes(text)
    assert turn.calls == [ToolCall("calculator", {"expression": "4821*37"}), ToolCall("python", {"code": "print(1)"})]
    assert turn.content == "Let me compute.\n and"
    assert turn.errors == []


def test_no_calls_is_all_prose() -> None:
    turn = hermes("  The answer is 42.  ")
    assert (turn.content, turn.calls, turn.errors) == ("The answer is 42.", [], [])


def test_call_without_arguments() -> None:
    assert hermes('<tool_call>{"name": "now"}</tool_call>').calls == [ToolCall("now", {})]


@pytest.mark.parametrize(("block", "error"), [
    ('{"name": "calc", "arguments": {"x": 1}', "the block is not valid JSON"),
    ('["calc", {}]', "expected a JSON object"),
    ('{"arguments": {"x": 1}}', 'no "name"'),
    ('{"name": "", "arguments": {}}', 'no "name"'),
    ('{"name": 3, "arguments": {}}', 'no "name"'),
    ('{"name": "calc", "arguments": [1, 2]}', "tool 'calc': \"arguments\" must be a JSON object, got an array"),
    ('{"name": "calc", "arguments": "[1, 2]"}', "tool 'calc': \"arguments\" must be a JSON object, got an array"),
    ('{"name": "calc", "arguments": "{x: 1}"}', "tool 'calc': \"arguments\" (a string) is not valid JSON"),
    ('{"name": "calc", "arguments": "7"}', "got a number"),
])
def test_malformed_block_is_one_error_and_others_still_parse(block: str, error: str) -> None:
    text = f'a <tool_call>{block}</tool_call> b <tool_call>{{"name": "ok", "arguments": {{}}}}</tool_call>'
    turn = hermes(text)
    assert turn.calls == [ToolCall("ok", {})]
    assert len(turn.errors) == 1 and error in turn.errors[0], turn.errors
    assert turn.errors[0].startswith("malformed tool call: ")
    assert turn.content == "a  b"


def test_unclosed_block() -> None:
    turn = hermes('x <tool_call>{"name": "a", "arguments": {}}</tool_call> y <tool_call>{"name": "b"')
    assert turn.calls == [ToolCall("a", {})]
    assert turn.errors == ["malformed tool call: <tool_call> without </tool_call>"]
    assert turn.content == "x  y"


def test_long_hostile_blocks_parse_fast() -> None:
    """1 MB blocks: a long valid argument, unterminated JSON, deep nesting, and many open tags."""
    big = "9" * 1_000_000
    texts = [
        f'<tool_call>{{"name": "calc", "arguments": {{"expression": "{big}"}}}}</tool_call>',
        '<tool_call>{"name": "calc", "arguments": {"expression": "' + big + "</tool_call>",
        "<tool_call>" + "[" * 1_000_000 + "</tool_call>",
        "<tool_call>" * 100_000,
        "</tool_call>" * 100_000,
    ]
    start = time.monotonic()
    turns = [hermes(t) for t in texts]
    assert time.monotonic() - start < 5.0  # generous: ~0.1 s here; a quadratic scan takes minutes
    assert turns[0].calls == [ToolCall("calc", {"expression": big})]
    assert "not valid JSON" in turns[1].errors[0]
    assert "nested too deeply" in turns[2].errors[0] or "not valid JSON" in turns[2].errors[0]
    assert turns[3].errors == ["malformed tool call: <tool_call> without </tool_call>"]
    assert turns[4].calls == [] and turns[4].errors == [] and turns[4].content == texts[4]


def test_choose_parser() -> None:
    assert choose_parser("auto", CHAT_TEMPLATE) is TOOL_PARSERS.get("hermes")
    assert choose_parser("hermes", None) is TOOL_PARSERS.get("hermes")
    with pytest.raises(ValueError, match=r"environment.tool_parser: `auto` found no known tool-call convention"):
        choose_parser("auto", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match=r"environment.tool_parser: .*the tokenizer has no chat template"):
        choose_parser("auto", None)
    with pytest.raises(ValueError, match=r"environment.tool_parser: unknown tool-call parser 'mistral'; available: auto, hermes"):
        choose_parser("mistral", CHAT_TEMPLATE)


def test_a_users_parser_that_fails_stops_with_one_line_naming_it(tmp_path) -> None:
    """The user's parser is called as given; its exception or a wrong return type is one line naming
    `environment.tool_parser`, not a traceback from inside the episode loop."""
    from ling_rl.environments.parsers import ParsedTurn
    from ling_rl.environments.spec import EnvironmentSetupError

    (tmp_path / "myparse.py").write_text(
        "from ling_rl.environments.parsers import ParsedTurn\n"
        "def good(text):\n    return ParsedTurn(content=text.upper())\n"
        "def broken(text):\n    return {'x': 1}['y']\n"
        "def wrong(text):\n    return text\n")
    assert choose_parser(f"{tmp_path}/myparse.py:good", None)("hi") == ParsedTurn(content="HI")
    with pytest.raises(EnvironmentSetupError, match=r"environment.tool_parser '.*myparse.py:broken' raised KeyError: 'y' "
                                                      r"\(on a model turn of 5 characters\)"):
        choose_parser(f"{tmp_path}/myparse.py:broken", None)("hello")
    with pytest.raises(EnvironmentSetupError, match=r"myparse.py:wrong' returned a str, not a ling_rl.environments.parsers.ParsedTurn"):
        choose_parser(f"{tmp_path}/myparse.py:wrong", None)("hello")
