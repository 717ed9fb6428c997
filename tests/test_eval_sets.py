"""Held-out evaluation with more sets (`eval.extra_data`, e.g. an OOD split) and units per response."""

from __future__ import annotations

from pathlib import Path

import pytest

from ling_rl.config import RecipeError, parse_recipe
from ling_rl.driver.evaluation import EVAL_SET, _summary, eval_max_tokens, eval_prompts, unit_counter
from ling_rl.types import Rollout, Sample, ScoredRollout

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(tiny_dir))


def _recipe(tree: dict | None = None, **eval_keys):
    return parse_recipe({"model": {"tiny": "tiny"}, "data": {"train": str(ROOT / "data/reasoning/train.jsonl")},
                         "rewards": [{"name": "exact_answer"}],
                         "eval": {"every": 1, "data": str(ROOT / "data/reasoning/eval.jsonl"), **eval_keys}, **(tree or {})})


def test_extra_sets_are_read_and_marked(tokenizer) -> None:
    prompts = eval_prompts(_recipe(max_prompts=5, extra_data={"ood": str(ROOT / "data/reasoning/ood.jsonl")}), tokenizer)
    marks = [s.columns.get(EVAL_SET) for s in prompts.samples]
    assert marks == [None] * 5 + ["ood"] * 5
    assert [s.id for s in prompts.samples] == [f"eval-{i}" for i in range(5)] + [f"ood-{i}" for i in range(5)]
    plain = eval_prompts(_recipe(max_prompts=5), tokenizer)
    assert [s.columns.get(EVAL_SET) for s in plain.samples] == [None] * 5


def test_summary_counts_units_as_lpo_cuts_them(tokenizer) -> None:
    texts = [" Ann has 14. Ann loses 3, so 14 - 3 = 11. The answer is 11.", " 11"]
    scored = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        rollout = Rollout(Sample("x", "q", [1]), 0, ids, text, [0.0] * len(ids), "stop", 0)
        scored.append(ScoredRollout(rollout, 1.0, {"exact_answer": 1.0}))
    counter = unit_counter(tokenizer, _recipe())
    assert counter is unit_counter(tokenizer, _recipe())  # built once per tokenizer and settings
    out = _summary("eval/ood/", "greedy", scored, [1.0, 0.0], 1.0, counter)
    # "Ann has 14." | " Ann loses 3," | " so 14 - 3 = 11." | " The answer is 11." -> 4 units; " 11" -> 1
    assert out == {"eval/ood/accuracy_greedy": 0.5, "eval/ood/response_len_greedy": (len(scored[0].rollout.response_ids) + 1) / 2,
                   "eval/ood/units_greedy": 2.5}


def test_one_eval_budget_whatever_the_curriculum_stage() -> None:
    # In the run and in `ling-rl eval` alike: eval.max_response_tokens, else rollout's; a stage's
    # shorter budget would make the in-run curve jump at the stage change.
    staged = {"rollout": {"max_response_tokens": 64}, "curriculum": {"stages": [{"name": "short", "max_response_tokens": 16}]}}
    assert eval_max_tokens(_recipe(staged)) == 64
    assert eval_max_tokens(_recipe(staged, max_response_tokens=32)) == 32
    with pytest.raises(RecipeError, match=r"eval.max_response_tokens: is 65, above rollout.max_response_tokens=64"):
        _recipe(staged, max_response_tokens=65)
