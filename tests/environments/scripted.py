"""A tool-call parser that plays a fixed script of calls, whatever the model wrote: with it an
untrained (random) tiny model runs real multi-turn episodes, so the tests exercise every path of
the episode loop (valid calls, a tool that raises, an unknown tool, a malformed call, a tool that
hangs, one whose process dies, and answers without a call) in real runs.

The parser is a user's own, named by file path in `environment.tool_parser`; it is called once per
model turn (from several threads), and each call takes the next entry of `SCRIPT`."""

from __future__ import annotations

import itertools
import threading

from ling_rl.environments.parsers import ParsedTurn, ToolCall

MALFORMED = "malformed"
SCRIPT: list[tuple[str, dict] | str | None] = [
    ("increment", {"a": 2}),
    ("boom", {}),
    ("increment", {"a": 1}),
    ("nope", {}),
    MALFORMED,
    None,                       # an answer: the episode ends
    ("increment", {"a": 3}),
    ("hang", {}),               # killed past environment.tool_timeout_s
    ("increment", {"a": 1}),
    ("die", {}),                # the episode's process exits: the episode fails
]

_lock = threading.Lock()
_turns = itertools.count()


def script(text: str) -> ParsedTurn:
    with _lock:
        entry = SCRIPT[next(_turns) % len(SCRIPT)]
    if entry is None:
        return ParsedTurn(content=text)
    if entry == MALFORMED:
        return ParsedTurn(content=text, errors=["the tool call is not valid JSON"])
    name, arguments = entry
    return ParsedTurn(content=text, calls=[ToolCall(name=name, arguments=dict(arguments))])


def counting_calculator(text: str) -> ParsedTurn:
    """Every turn calls the calculator until the third, which answers: for runs of plain tools."""
    with _lock:
        k = next(_turns)
    if k % 3 == 2:
        return ParsedTurn(content=text)
    return ParsedTurn(content=text, calls=[ToolCall(name="calculator", arguments={"expression": f"{k} * 7 + 1"})])
