"""`data.chat_template`: prompts and DFT examples through the tokenizer's chat template, with the
tiny model's own tokenizer (its template is the one Hugging Face's `apply_chat_template` reads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ling_rl.config import RecipeError, parse_recipe
from ling_rl.curriculum.data import DatasetError, PromptSource
from ling_rl.curriculum.dft import DFTConfig, DFTData
from ling_rl.models.tiny import CHAT_TEMPLATE

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "You are a careful calculator."


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(tiny_dir), trust_remote_code=True)


def _recipe(**data: object):
    return parse_recipe({"model": {"tiny": "tiny"}, "rewards": [{"name": "exact_answer"}],
                         "data": {"train": str(ROOT / "data/arith/eval.jsonl"), "max_rows": 5, **data}})


def _rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "data/arith/train.jsonl").read_text().splitlines()[:n]]


def test_the_tiny_tokenizer_ships_a_template_that_apply_chat_template_uses(tokenizer) -> None:
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = tokenizer.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                                         tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_prompt_tokens_are_the_templates_rendering(tokenizer) -> None:
    recipe = _recipe(chat_template=True, system_prompt=SYSTEM, prompt_template="Question: {prompt}")
    source = PromptSource(recipe.data, tokenizer, 256)
    first = json.loads((ROOT / "data/arith/eval.jsonl").read_text().splitlines()[0])
    sample = source.samples[0]
    expected = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question: {first['prompt']}"}]
    assert sample.messages == expected
    rendered = tokenizer.apply_chat_template(expected, tokenize=True, add_generation_prompt=True)
    assert sample.prompt_ids == list(rendered["input_ids"])
    assert sample.prompt == tokenizer.apply_chat_template(expected, tokenize=False, add_generation_prompt=True)
    assert sample.prompt.endswith("<|im_start|>assistant\n")


def test_without_a_system_prompt_only_the_user_speaks_and_plain_prompts_are_unchanged(tokenizer) -> None:
    chat = PromptSource(_recipe(chat_template=True).data, tokenizer, 256).samples[0]
    assert [m["role"] for m in chat.messages] == ["user"]
    plain = PromptSource(_recipe().data, tokenizer, 256).samples[0]
    assert plain.messages is None and plain.prompt == chat.messages[0]["content"]
    assert plain.prompt_ids == tokenizer.encode(plain.prompt, add_special_tokens=False)


def test_system_prompt_needs_the_chat_template() -> None:
    with pytest.raises(RecipeError, match="data: system_prompt is set but chat_template is false"):
        _recipe(system_prompt=SYSTEM)


def test_a_tokenizer_without_a_chat_template_is_an_error_naming_the_key() -> None:
    import transformers

    from ling_rl.models.tiny import EOS, PAD, build_tokenizer

    bare = transformers.PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), eos_token=EOS, pad_token=PAD)
    with pytest.raises(DatasetError, match="data.chat_template is true but the tokenizer .* has no chat template"):
        PromptSource(_recipe(chat_template=True).data, bare, 256)


def test_dft_examples_are_rendered_by_the_template_and_end_with_eos(tokenizer) -> None:
    cfg = DFTConfig(enabled=True, think_on_fraction=0.5)
    data = DFTData(_rows(20), cfg, tokenizer, "prompt", "answer", "train.jsonl", chat_template=True, system_prompt=SYSTEM)
    plain = DFTData(_rows(20), cfg, tokenizer, "prompt", "answer", "train.jsonl")
    for (prompt, response), (plain_prompt, plain_response), row in zip(data.examples, plain.examples, _rows(20)):
        mode_prompt = tokenizer.decode(plain_prompt)  # the mode's template, filled in
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": mode_prompt}]
        assert prompt == list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"])
        reply = tokenizer.decode(plain_response[:-1]).lstrip()  # without the EOS and the space after "Answer:"
        whole = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}], tokenize=False)
        assert tokenizer.decode(prompt + response) == whole + "<|endoftext|>"
        assert response[-1] == tokenizer.eos_token_id and row["answer"] in reply


def test_check_renders_prompts_with_the_tiny_template() -> None:
    from ling_rl.commands.preflight import preflight

    recipe = _recipe(chat_template=True, system_prompt=SYSTEM)
    preflight(recipe, None)  # check's tiny tokenizer carries the template (without one: PreflightError)
