"""Conversations with tools as token ids (ling_rl/environments/rendering.py) and the tiny tokenizer's
template with tool support (ling_rl/models/tiny.py), with the real tiny tokenizer: a whole
conversation built piece by piece (prompt + assistant turn + tool results + assistant turn) is the
template's rendering with EOS where the model samples it, for the tiny ChatML template (EOS
`<|endoftext|>` is not written by the template) and a Qwen2.5-style one (EOS is `<|im_end|>`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer
from transformers.utils import get_json_schema

from ling_rl.environments.rendering import ChatRenderer
from ling_rl.environments.spec import EnvironmentSetupError
from ling_rl.models.tiny import CHAT_TEMPLATE, build_tokenizer, save_tokenizer

# The tiny template before tool support: messages without tools render exactly as with it.
OLD_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A Qwen2.5-style template (its tool parts as Qwen2.5-Instruct writes them), for a tokenizer whose
# EOS is `<|im_end|>`: the template writes EOS and then "\n", which the model never samples. A newline
# right after a block tag is written as `{{ '\\n' }}`: transformers renders with trim_blocks.
QWEN_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant.{% endif %}"
    "{{ '\\n\\n' }}# Tools\n\n<tools>{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}{{ '\\n' }}</tools>\n\n"
    "For each function call, return a json object within <tool_call></tool_call> XML tags:\n"
    "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' or (m['role'] == 'system' and not loop.first) "
    "or (m['role'] == 'assistant' and not m['tool_calls']) %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% elif m['role'] == 'assistant' %}<|im_start|>assistant{% if m['content'] %}{{ '\\n' + m['content'] }}{% endif %}"
    "{% for c in m['tool_calls'] %}{% set f = c['function'] if c['function'] is defined else c %}"
    "{{ '\\n' }}<tool_call>\n{\"name\": \"{{ f['name'] }}\", \"arguments\": {{ f['arguments'] | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}"
    "{% if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\\n' }}<tool_response>\n{{ m['content'] }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression.

    Args:
        expression: The expression, e.g. "4821*37".
    """
    return expression


def add(a: int, b: float = 1.0) -> float:
    """Adds two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


SCHEMAS = [get_json_schema(calculator), get_json_schema(add)]
TOOLS_LINES = (
    "Tools:\n"
    "calculator(expression: string): Evaluates an arithmetic expression.\n"
    "add(a: integer, b: number): Adds two numbers.\n"
    'To call a tool, write <tool_call>{"name": <tool name>, "arguments": {<argument>: <value>, ...}}</tool_call>'
)


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATION = [
    {"role": "system", "content": "Use the tools."},
    {"role": "user", "content": "What is 4821 * 37 + 5?"},
    {"role": "assistant", "content": "Let me compute.",
     "tool_calls": [_call("calculator", expression="4821*37"), _call("add", a=178377, b=5)]},
    {"role": "tool", "name": "calculator", "content": "178377"},
    {"role": "tool", "name": "add", "content": "178382"},
    {"role": "assistant", "content": "The answer is 178382."},
]


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    save_tokenizer(build_tokenizer(1024, seed=0), folder)  # init_tiny's tokenizer, without the weights
    return folder


@pytest.fixture(scope="module")
def tiny_tok(tiny_tokenizer_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def qwen_tok(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny tokenizer with the Qwen-style template and `<|im_end|>` as EOS."""
    folder = tmp_path_factory.mktemp("qwen_style_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        config = (tiny_tokenizer_dir / name).read_text()
        if name != "tokenizer.json":
            data = json.loads(config)
            data["eos_token"] = "<|im_end|>"
            if "chat_template" in data:
                data["chat_template"] = QWEN_TEMPLATE
            config = json.dumps(data)
        (folder / name).write_text(config)
    return AutoTokenizer.from_pretrained(str(folder))


def _render(tok: Any, messages: list[dict[str, Any]], template: str | None = None, **kwargs: Any) -> str:
    return tok.apply_chat_template(messages, tokenize=False, chat_template=template, **kwargs)


@pytest.mark.parametrize("gen", [False, True])
def test_tiny_template_without_tools_renders_as_before(tiny_tok: Any, gen: bool) -> None:
    assert tiny_tok.chat_template == CHAT_TEMPLATE
    plain = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
             {"role": "assistant", "content": "A"}, {"role": "tool", "content": "R"},
             {"role": "user", "content": ""}]
    for messages in (plain, plain[1:], plain[1:2]):
        assert _render(tiny_tok, messages, add_generation_prompt=gen) == \
            _render(tiny_tok, messages, OLD_TEMPLATE, add_generation_prompt=gen)
        assert _render(tiny_tok, messages, add_generation_prompt=gen, tools=[]) == \
            _render(tiny_tok, messages, OLD_TEMPLATE, add_generation_prompt=gen)


def test_tiny_template_with_tools_and_calls(tiny_tok: Any) -> None:
    assert _render(tiny_tok, CONVERSATION, tools=SCHEMAS) == (
        f"<|im_start|>system\nUse the tools.\n{TOOLS_LINES}<|im_end|>\n"
        "<|im_start|>user\nWhat is 4821 * 37 + 5?<|im_end|>\n"
        '<|im_start|>assistant\nLet me compute.<tool_call>{"name": "calculator", "arguments": {"expression": "4821*37"}}'
        '</tool_call><tool_call>{"name": "add", "arguments": {"a": 178377, "b": 5}}</tool_call><|im_end|>\n'
        "<|im_start|>tool\n178377<|im_end|>\n"
        "<|im_start|>tool\n178382<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is 178382.<|im_end|>\n"
    )
    # No system message: the tools get a system turn of their own. Arguments as a JSON string stay as given.
    call = {"type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    assert _render(tiny_tok, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None, "tool_calls": [call]}],
                   tools=SCHEMAS[1:]) == (
        "<|im_start|>system\n" + "\n".join(TOOLS_LINES.splitlines()[i] for i in (0, 2, 3)) + "<|im_end|>\n"
        "<|im_start|>user\nQ<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call><|im_end|>\n'
    )


def test_tiny_conversation_from_pieces(tiny_tok: Any) -> None:
    """prompt + assistant turn + tool results + assistant turn, each rendered and tokenized on its
    own, is the template's rendering with `<|endoftext|>` after each assistant turn (the template
    does not write EOS; the model samples it after `<|im_end|>\\n`, as DFT trains it)."""
    r = ChatRenderer(tiny_tok, SCHEMAS)
    text, prompt_ids = r.prompt(CONVERSATION[:2])
    pieces = [prompt_ids, r.assistant_turn_ids(CONVERSATION[2]), r.tool_result_ids(CONVERSATION[3:5]),
              r.assistant_turn_ids(CONVERSATION[5])]
    decoded = [tiny_tok.decode(p, skip_special_tokens=False) for p in pieces]
    assert decoded == [
        f"<|im_start|>system\nUse the tools.\n{TOOLS_LINES}<|im_end|>\n<|im_start|>user\nWhat is 4821 * 37 + 5?<|im_end|>\n"
        "<|im_start|>assistant\n",
        'Let me compute.<tool_call>{"name": "calculator", "arguments": {"expression": "4821*37"}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {"a": 178377, "b": 5}}</tool_call><|im_end|>\n<|endoftext|>',
        "<|im_start|>tool\n178377<|im_end|>\n<|im_start|>tool\n178382<|im_end|>\n<|im_start|>assistant\n",
        "The answer is 178382.<|im_end|>\n<|endoftext|>",
    ]
    assert text == decoded[0]
    whole = "".join(decoded)
    assert whole.replace("<|endoftext|>", "") == _render(tiny_tok, CONVERSATION, tools=SCHEMAS)
    assert sum(pieces, []) == tiny_tok.encode(whole, add_special_tokens=False)
    assert pieces[1][-1] == pieces[3][-1] == tiny_tok.eos_token_id


def test_qwen_style_conversation_from_pieces(qwen_tok: Any) -> None:
    """EOS is the template's `<|im_end|>`: the model's turn ends at it, and the "\\n" the template
    writes after it is the first token of the tool result (the prefix is cut after its last EOS)."""
    assert qwen_tok.eos_token == "<|im_end|>"
    r = ChatRenderer(qwen_tok, SCHEMAS)
    _, prompt_ids = r.prompt(CONVERSATION[:2])
    pieces = [prompt_ids, r.assistant_turn_ids(CONVERSATION[2]), r.tool_result_ids(CONVERSATION[3:5]),
              r.assistant_turn_ids(CONVERSATION[5])]
    decoded = [qwen_tok.decode(p, skip_special_tokens=False) for p in pieces]
    tools = "".join("\n" + json.dumps(s) for s in SCHEMAS)
    assert decoded == [
        f"<|im_start|>system\nUse the tools.\n\n# Tools\n\n<tools>{tools}\n</tools>\n\n"
        "For each function call, return a json object within <tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat is 4821 * 37 + 5?<|im_end|>\n<|im_start|>assistant\n",
        'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "4821*37"}}\n</tool_call>'
        '\n<tool_call>\n{"name": "add", "arguments": {"a": 178377, "b": 5}}\n</tool_call><|im_end|>',
        "\n<|im_start|>user\n<tool_response>\n178377\n</tool_response>\n<tool_response>\n178382\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n",
        "The answer is 178382.<|im_end|>",
    ]
    assert "".join(decoded) + "\n" == _render(qwen_tok, CONVERSATION, tools=SCHEMAS)
    assert pieces[1][-1] == pieces[3][-1] == qwen_tok.eos_token_id


def test_templates_without_tool_support_are_refused(tiny_tok: Any) -> None:
    with pytest.raises(EnvironmentSetupError, match=r"does not show the tools in the prompt \(missing: calculator, add\)"):
        ChatRenderer(_with_template(tiny_tok, OLD_TEMPLATE), SCHEMAS)
    shows_tools_only = "{% for t in tools %}{{ t['function']['name'] }}{% endfor %}" + OLD_TEMPLATE
    with pytest.raises(EnvironmentSetupError, match=r"does not render the tool call's name, the tool call's arguments;"):
        ChatRenderer(_with_template(tiny_tok, shows_tools_only), SCHEMAS)
    with pytest.raises(EnvironmentSetupError, match=r"has no chat template"):
        ChatRenderer(_with_template(tiny_tok, None), SCHEMAS)


def _with_template(tok: Any, template: str | None) -> Any:
    import copy

    other = copy.deepcopy(tok)
    other.chat_template = template
    return other
