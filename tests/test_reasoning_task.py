"""The multi-sentence reasoning task (data/reasoning, issue 13): the committed files are what the
generator writes, every answer is right by an independent recomputation from the prompt's text,
the splits share no prompt, and the DFT traces are flawed in the documented shares."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from ling_rl.curriculum.dft import DFTConfig, response_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "reasoning"
SPLITS = ("train", "eval", "ood", "dft")


def _generator():
    spec = importlib.util.spec_from_file_location("reasoning_generate", DATA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]


# Parsed from the text alone (not with the generator's code): the story's start and events.
_START = re.compile(r"^(\w+) has (\d+) (\w+)\.")
_EVENT = re.compile(r"(\w+) (buys|finds|gives away|loses) (\d+)(?: more)?\.")
_SIGN = {"buys": 1, "finds": 1, "gives away": -1, "loses": -1}
_STEP = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")
_RESTATED = re.compile(r"\w+ (?:buys|finds|gives away|loses) \d+, so \d+ [+-] \d+ = \d+\.")


def _recompute(prompt: str) -> tuple[int, list[int]]:
    """The final amount and every running amount, from the prompt's sentences."""
    start = _START.match(prompt)
    assert start, prompt
    values = [int(start.group(2))]
    for _, verb, k in _EVENT.findall(prompt[start.end():]):
        values.append(values[-1] + _SIGN[verb] * int(k))
    return values[-1], values


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {split: _rows(split) for split in SPLITS}


def test_committed_files_are_the_generators_output(splits) -> None:
    generated = _generator().generate({split: len(rows) for split, rows in splits.items()}, seed=0)
    for split in SPLITS:
        assert generated[split] == splits[split], f"data/reasoning/{split}.jsonl differs from generate.py's output"


def test_answers_by_recomputation(splits) -> None:
    for split in ("train", "eval", "ood"):
        for row in splits[split]:
            answer, values = _recompute(row["prompt"])
            assert row["answer"] == str(answer), row
            assert row["steps"] == len(values) - 1
            assert all(v >= 1 for v in values)
            # The reference solution: one sentence per step, each step's arithmetic right, the
            # running amounts those of the story, and the stated answer last.
            steps = _STEP.findall(row["solution"])
            assert len(steps) == row["steps"]
            for (a, op, k, result), before, after in zip(steps, values, values[1:]):
                assert int(a) == before and int(result) == after
                assert (int(a) + int(k) if op == "+" else int(a) - int(k)) == int(result)
            assert row["solution"].endswith(f"The answer is {answer}.")
    for row in splits["dft"]:
        assert row["correct_answer"] == str(_recompute(row["prompt"])[0])


def test_dft_traces_reach_the_answer_they_state(splits) -> None:
    """Each DFT trace's final answer follows from its own steps, chained, wrong ones included."""
    for row in splits["dft"]:
        text = row["solution"]
        main = [m for m in _STEP.finditer(text) if not text[: m.start()].endswith("check: ")]
        assert len(main) == row["steps"], row
        value = int(_START.match(row["prompt"]).group(2))
        for match in main:
            a, op, k, result = match.groups()
            assert int(a) == value, row
            value = int(result)
        assert row["answer"] == str(value) and text.endswith(f"The answer is {value}.")
        if not {"misread", "slip"} & set(row["flaws"]):
            assert row["answer"] == row["correct_answer"], row
        assert ("verbose" in row["flaws"]) == ("Then check:" in text)
        # terse: every step the bare equation; full: every step restates its event first
        restated = len(_RESTATED.findall(text))
        assert restated == (0 if row["style"] == "terse" else row["steps"]), row


def test_flaw_shares(splits) -> None:
    gen = _generator()
    rows = splits["dft"]
    n = len(rows)
    share = {flaw: sum(flaw in r["flaws"] for r in rows) / n for flaw in ("misread", "slip", "verbose")}
    assert abs(share["verbose"] - gen.VERBOSE_SHARE) < 0.03
    assert abs(share["slip"] - gen.SLIP_SHARE) < 0.02
    assert abs(sum(r["style"] == "terse" for r in rows) / n - gen.TERSE_SHARE) < 0.03
    with_loss = [r for r in rows if " loses " in r["prompt"]]
    # at least one of its losses misread: 0.6 with one loss, more with several
    assert 0.6 < sum("misread" in r["flaws"] for r in with_loss) / len(with_loss) < 0.8
    wrong = sum(r["answer"] != r["correct_answer"] for r in rows) / n
    assert 0.3 < wrong < 0.6  # a DFT start that is right often but not always


def test_splits_are_disjoint_and_differ_in_difficulty(splits) -> None:
    prompts = {split: {r["prompt"] for r in rows} for split, rows in splits.items()}
    for split, rows in splits.items():
        assert len(prompts[split]) == len(rows), f"{split} repeats a prompt"
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not prompts[a] & prompts[b], f"{a} and {b} share prompts"
    for split in ("train", "eval", "dft"):
        assert {r["steps"] for r in splits[split]} == {2, 3, 4, 5}
    for split in ("train", "eval"):
        assert max(r["max_number"] for r in splits[split]) == 40
    assert {r["steps"] for r in splits["ood"]} == {6, 7}
    assert max(r["max_number"] for r in splits["ood"]) == 50


def test_sentences_and_tokens_per_response(splits, tiny_dir: Path) -> None:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_dir))
    for split in ("eval", "ood"):
        for row in splits[split]:
            sentences = row["solution"].count(". ") + 1
            assert 4 <= sentences <= 12
            assert 30 <= len(tok.encode(" " + row["solution"], add_special_tokens=False)) <= 150
    # Every amount is one token, so arithmetic is over whole numbers, not digit pieces.
    assert all(len(tok.encode(f" {n}", add_special_tokens=False)) == 1 for n in range(1, 107))


def test_dft_think_off_response_writes_the_reasoning(splits) -> None:
    row = splits["dft"][0]
    assert response_text(row, False, DFTConfig(), "answer") == f" {row['answer']}"
    plain = response_text(row, False, DFTConfig(think_off_response="solution"), "answer")
    assert plain == f" {row['solution']}" and "<think>" not in plain
    think = response_text(row, True, DFTConfig(think_off_response="solution"), "answer")
    assert think == f" <think>{row['solution']}</think><answer>{row['answer']}</answer>"
    with pytest.raises(ValueError, match="think_off_response"):
        DFTConfig(think_off_response="both")
