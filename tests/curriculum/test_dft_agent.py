"""DFT on multi-turn tool-use traces (issue 24) and the shipped agentic task's data (data/agent/)."""

from __future__ import annotations

import collections
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ling_rl.curriculum.data import DatasetError, load_rows
from ling_rl.curriculum.dft import DFTConfig, DFTData
from ling_rl.environments.config import EnvironmentConfig
from ling_rl.environments.loading import resolve_environment
from ling_rl.environments.parsers import TOOL_PARSERS
from ling_rl.environments.process import EnvironmentProcess
from ling_rl.environments.rendering import ChatRenderer
from ling_rl.plugins import load_file

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data/agent"
LEDGER = f"{DATA / 'ledger.py'}:Ledger"
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="module")
def schemas() -> tuple[dict[str, Any], ...]:
    return resolve_environment(EnvironmentConfig(factory=LEDGER)).schemas


@pytest.fixture(scope="module")
def dft_rows() -> list[dict[str, Any]]:
    # Read as training reads it (HF datasets): nested messages come back with the columns of all rows.
    return load_rows(str(DATA / "dft.jsonl"))


def _generator():
    return load_file(DATA / "generate.py", "data/agent/generate.py")


def _first(rows: list[dict[str, Any]], style: str, steps: int) -> dict[str, Any]:
    return next(r for r in rows if r["style"] == style and r["steps"] == steps)


def test_a_trace_is_the_prompt_then_turns_and_tool_results_as_the_episode_builds_them(tokenizer, schemas, dft_rows) -> None:
    row = _first(dft_rows, "tool", 2)
    calls = [m["tool_calls"][0]["function"] for m in row["messages"] if m.get("tool_calls")]
    results = [m["content"] for m in row["messages"] if m["role"] == "tool"]
    data = DFTData([row], DFTConfig(enabled=True), tokenizer, "prompt", "answer", "dft.jsonl", chat_template=True,
                   tool_schemas=schemas)
    (prompt, response), mask = data.examples[0], data.response_masks[0]

    # The same ids as the episode loop's pieces: prompt, turn, tool results, turn, tool results, answer.
    renderer = ChatRenderer(tokenizer, schemas)
    user, a1, t1, a2, t2, a3, t3, done = row["messages"]
    pieces = [(renderer.assistant_turn_ids(a1), True), (renderer.tool_result_ids([t1]), False),
              (renderer.assistant_turn_ids(a2), True), (renderer.tool_result_ids([t2]), False),
              (renderer.assistant_turn_ids(a3), True), (renderer.tool_result_ids([t3]), False),
              (renderer.assistant_turn_ids(done), True)]
    assert prompt == renderer.prompt([user])[1]
    assert response == [t for ids, _ in pieces for t in ids]
    assert mask == [trained for ids, trained in pieces for _ in ids]

    # Written out: what the model is trained to sample (each turn through EOS), and what it is not.
    decoded = tokenizer.decode(prompt)
    assert decoded.startswith("<|im_start|>system\nTools:\nanswer(value: string): ")
    assert "\ncalculate(a: string, op: string, b: string): " in decoded
    assert decoded.endswith(f"<|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n")

    def call(name: str, args: dict[str, Any]) -> str:
        return f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(args)}}}</tool_call><|im_end|>\n{EOS}'

    trained = [t for t, m in zip(response, mask, strict=True) if m]
    untrained = [t for t, m in zip(response, mask, strict=True) if not m]
    assert [c["name"] for c in calls] == ["calculate", "calculate", "answer"]
    # Read through HF datasets, each call keeps its own arguments (no other tool's keys as nulls).
    assert calls[2]["arguments"] == {"value": "r2"}
    assert tokenizer.decode(trained) == "".join(call(c["name"], c["arguments"]) for c in calls) + f"Done.<|im_end|>\n{EOS}"
    assert tokenizer.decode(untrained) == "".join(f"<|im_start|>tool\n{r}<|im_end|>\n<|im_start|>assistant\n" for r in results)
    assert "null" not in tokenizer.decode(trained)
    assert tokenizer.decode(prompt + response).count(EOS) == 4  # one per model turn, where generation stopped

    batch = data.batch(tokenizer.pad_token_id)
    n = len(prompt) + len(response)
    assert batch.input_ids[0, :n].tolist() == prompt + response
    assert batch.response_mask[0, :n].tolist() == [False] * len(prompt) + mask


def test_traces_and_prompt_rows_mix(tokenizer, schemas, dft_rows) -> None:
    """Every shipped trace style tokenizes; a prompt/answer row in the same data trains its whole reply."""
    rows = [_first(dft_rows, style, 3) for style in ("guess", "tool", "bad_json", "wrong_tool", "wrong_operand")]
    plain = {"prompt": "1 + 1?", "answer": "2", "solution": "1 + 1 = 2. The answer is 2."}
    data = DFTData([*rows, plain], DFTConfig(enabled=True), tokenizer, "prompt", "answer", "dft.jsonl",
                   chat_template=True, tool_schemas=schemas)
    for (prompt, response), mask, row in zip(data.examples, data.response_masks, rows):
        turns = sum(m["role"] == "assistant" for m in row["messages"])
        assert tokenizer.decode([t for t, m in zip(response, mask) if m]).count(EOS) == turns
        assert tokenizer.decode([t for t, m in zip(response, mask) if not m]).count("<|im_start|>tool\n") == turns - 1
    assert data.response_masks[-1] == [True] * len(data.examples[-1][1])
    assert tokenizer.decode(data.examples[-1][1]) == f"2<|im_end|>\n{EOS}"


def _trace() -> list[dict[str, Any]]:
    return [{"role": "user", "content": "What is 12*34?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*34"}}}]},
            {"role": "tool", "name": "calculator", "content": "408"},
            {"role": "assistant", "content": "The answer is 408."}]


def _broken(change: str) -> list[dict[str, Any]]:
    m = _trace()
    if change == "no assistant":
        return m[:1]
    if change == "unknown role":
        m[2]["role"] = "function"
    elif change == "tool first":
        return [m[0], m[2], m[3]]
    elif change == "user later":
        m.insert(3, {"role": "user", "content": "and now?"})
    elif change == "ends with tool":
        return m[:3]
    elif change == "two assistants":
        m.insert(3, {"role": "assistant", "content": "Let me think."})
    elif change == "bad tool_calls":
        m[1]["tool_calls"] = [{"function": {"arguments": {}}}]
    elif change == "no content":
        del m[3]["content"]
    return m


@pytest.mark.parametrize(("change", "message"), [
    ("no assistant", r"row 1: messages: no assistant turn"),
    ("unknown role", r"row 1: messages\[2\]: unknown role 'function'"),
    ("tool first", r"row 1: messages\[1\]: a tool message before any assistant call"),
    ("user later", r"row 1: messages\[3\]: a user message after the first assistant turn"),
    ("ends with tool", r"row 1: messages: ends with a tool message"),
    ("two assistants", r"row 1: messages\[4\]: an assistant turn right after another"),
    ("bad tool_calls", r"row 1: messages\[1\]: tool_calls must be"),
    ("no content", r"row 1: messages\[3\]: assistant message without text content"),
])
def test_a_malformed_trace_names_the_row_and_message(tokenizer, schemas, change: str, message: str) -> None:
    rows = [{"messages": _trace()}, {"messages": _broken(change)}]
    with pytest.raises(DatasetError, match=r"^dft.jsonl: " + message):
        DFTData(rows, DFTConfig(enabled=True), tokenizer, "prompt", "answer", "dft.jsonl", chat_template=True,
                tool_schemas=schemas)


def test_a_trace_needs_the_chat_template(tokenizer, schemas) -> None:
    with pytest.raises(DatasetError, match=r"^dft.jsonl: row 0: messages: a multi-turn trace needs data.chat_template"):
        DFTData([{"messages": _trace()}], DFTConfig(enabled=True), tokenizer, "prompt", "answer", "dft.jsonl",
                tool_schemas=schemas)


def test_the_shipped_files_are_what_the_generator_writes() -> None:
    gen = _generator()
    splits = gen.generate(gen.DEFAULT_SIZES, seed=0)
    for split, rows in splits.items():
        assert (DATA / f"{split}.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in rows), split
    prompts = [r["prompt"] for rows in splits.values() for r in rows]
    assert len(set(prompts)) == len(prompts)  # eval and OOD prompts never reach DFT or RL
    for split in ("train", "eval", "dft"):
        assert {r["steps"] for r in splits[split]} == {2, 3}
    ood_stories = {f.__name__ for f in gen.OOD_STORIES}
    assert {r["story"] for r in splits["ood"]} == ood_stories and not ood_stories & {r["story"] for r in splits["train"]}
    dft = splits["dft"]
    styles = collections.Counter("bad_call" if r["style"] in gen.BAD_CALL_KINDS else r["style"] for r in dft)
    for style, share in gen.DEFAULT_MIX.items():  # 1500 draws: within 4 points of the mix
        assert abs(styles[style] / len(dft) - share) < 0.04, styles
    assert sum(r["answer"] == r["correct_answer"] for r in dft) / len(dft) < 0.45  # the imitated data is mostly wrong


def _replay(row: dict[str, Any], call_tool) -> collections.Counter:
    """Replay a trace's calls through `call_tool(name, arguments) -> text` and check each tool
    message is that text (a malformed block: the hermes parser's error); the kinds of calls seen."""
    hermes = TOOL_PARSERS.get("hermes")
    messages = row["messages"]
    seen: collections.Counter = collections.Counter()
    for k, m in enumerate(messages):
        if m["role"] != "tool":
            continue
        call = messages[k - 1]
        if call.get("tool_calls"):
            f = call["tool_calls"][0]["function"]
            assert m["content"] == call_tool(f["name"], dict(f["arguments"])), (row["id"], f)
            seen[f["name"]] += 1
        else:
            parsed = hermes(call["content"])
            assert not parsed.calls and [m["content"]] == [str({"error": e}) for e in parsed.errors], row["id"]
            seen["malformed"] += 1
    return seen


def test_trace_tool_results_are_what_the_episode_would_get(dft_rows) -> None:
    """Every tool message in the traces is the text the episode loop would feed back for that call:
    the Ledger's result, the tool process's unknown-tool error, the parser's malformed-call error.
    One trace of each style runs through a real episode process; all 1500 through the Ledger itself
    (a process per row would take minutes), which answers as the process does for known tools."""
    gen = _generator()
    ledger_cls = load_file(DATA / "ledger.py", "data/agent/ledger.py").Ledger
    for style in ("guess", "tool", "bad_json", "wrong_tool", "wrong_operand"):
        row = _first(dft_rows, style, 3)
        process = EnvironmentProcess(resolve_environment(EnvironmentConfig(factory=LEDGER)), timeout_s=30,
                                     max_output_chars=2000)
        process.start()
        try:
            process.reset({**row, "prompt": row["messages"][:1]})
            _replay(row, lambda name, args: process.call(name, args, 30).content)
        finally:
            process.close()

    seen: collections.Counter = collections.Counter()
    for row in dft_rows:
        env = ledger_cls()
        env.reset(**{**row, "answer": row["correct_answer"]})

        def in_process(name: str, args: dict[str, Any]) -> str:
            if name not in ("calculate", "answer"):
                return gen.UNKNOWN_TOOL_RESULT
            try:
                return str(getattr(env, name)(**args))
            except Exception as e:  # TRL's str({"error": str(e)}), as the process answers
                return str({"error": str(e)})

        seen += _replay(row, in_process)
        messages = row["messages"]
        assert messages[-1]["content"] == "Done." and messages[-3]["tool_calls"][0]["function"]["name"] == "answer"
        assert messages[-2]["content"] == f"submitted {row['answer']}"
        assert env.get_reward() == float(row["answer"] == row["correct_answer"]), row["id"]
        if row["style"] == "tool":  # one calculation per step, on names, then the last result submitted by name
            assert sum(bool(m.get("tool_calls")) for m in messages) == row["steps"] + 1 >= 3
            assert row["answer"] == row["correct_answer"]
    assert min(seen.values()) > 50, seen


def test_a_malformed_call_is_a_real_call_cut_short(tokenizer, schemas, dft_rows) -> None:
    """The bad_json turn is the template's own rendering of a call with one brace missing."""
    row = _first(dft_rows, "bad_json", 2)
    bad = next(m for m in row["messages"] if m["role"] == "assistant" and "<tool_call>" in m["content"])
    args = json.loads(bad["content"].removeprefix("<tool_call>").removesuffix("</tool_call>") + "}")["arguments"]
    good = copy.deepcopy(_trace()[1])
    good["tool_calls"][0]["function"] = {"name": "calculate", "arguments": args}
    renderer = ChatRenderer(tokenizer, schemas)
    assert tokenizer.decode(renderer.assistant_turn_ids(good)).replace("}}</tool_call>", "}</tool_call>") == \
        tokenizer.decode(renderer.assistant_turn_ids(bad))


def test_the_system_prompt_comes_first_as_in_rl_prompts(tokenizer, schemas) -> None:
    data = DFTData([{"messages": _trace()}], DFTConfig(enabled=True), tokenizer, "prompt", "answer", "dft.jsonl",
                   chat_template=True, system_prompt="Use the tools.", tool_schemas=schemas)
    rl_prompt = ChatRenderer(tokenizer, schemas).prompt([{"role": "system", "content": "Use the tools."}, _trace()[0]])
    assert data.examples[0][0] == rl_prompt[1]
    assert tokenizer.decode(data.examples[0][0]).startswith("<|im_start|>system\nUse the tools.\nTools:\n")
