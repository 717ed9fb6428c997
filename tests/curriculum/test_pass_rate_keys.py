"""Pass rates are keyed by data source and sample id: two data-mix sources without `id` columns
both number their rows "0", "1", ... and must not share pass rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ling_rl.curriculum.config import CurriculumConfig, DataConfig, StageConfig
from ling_rl.curriculum.data import PromptSource
from ling_rl.curriculum.evo_cot import Curriculum
from ling_rl.types import Rollout, Sample, ScoredRollout


def _source(path: Path, answers: list[str]) -> PromptSource:
    path.write_text("".join(json.dumps({"prompt": f"q{a}", "answer": a}) + "\n" for a in answers))
    return PromptSource(DataConfig(train=str(path), shuffle=False), None, 64)


def _group(sample: Sample, index: int, scores: list[float]) -> list[ScoredRollout]:
    return [ScoredRollout(rollout=Rollout(sample=sample, group=index, response_ids=[7], response_text="x",
                                          inf_logprobs=[-0.1], finish_reason="stop", policy_version=0),
                          reward=s, breakdown={"exact_answer": s}) for s in scores]


def _mix(easy: str, hard: str) -> CurriculumConfig:
    return CurriculumConfig(pass_rate_ema=1.0, stages=[StageConfig(name="mix", data_mix={easy: 1.0, hard: 1.0})])


def test_rows_of_two_sources_with_the_same_index_keep_their_own_pass_rates(tmp_path: Path) -> None:
    easy_path, hard_path = str(tmp_path / "easy.jsonl"), str(tmp_path / "hard.jsonl")
    easy = _source(tmp_path / "easy.jsonl", ["1", "2"]).next_batch(1)[0]
    hard = _source(tmp_path / "hard.jsonl", ["3", "4"]).next_batch(1)[0]
    assert easy.id == hard.id == "0"  # no id column: the row index
    cur = Curriculum(_mix(easy_path, hard_path), 512, train_source=easy_path)
    cur.update(0, _group(easy, 0, [1.0, 1.0]) + _group(hard, 1, [0.0, 0.0]))
    # Keyed by id alone, both read the rate of the last group scored ("0": 0.0).
    assert [s.columns["pass_rate"] for s in cur.annotate([easy, hard])] == [1.0, 0.0]
    assert cur.state_dict()["pass_rates"] == {easy_path: {"0": 1.0}, hard_path: {"0": 0.0}}


def test_checkpointed_pass_rates_round_trip(tmp_path: Path) -> None:
    easy = _source(tmp_path / "easy.jsonl", ["1"]).next_batch(1)[0]
    hard = _source(tmp_path / "hard.jsonl", ["3"]).next_batch(1)[0]
    cur = Curriculum(_mix(easy.source, hard.source), 512, train_source=easy.source)
    cur.update(0, _group(easy, 0, [1.0, 1.0]) + _group(hard, 1, [0.0, 1.0]))
    back = Curriculum(_mix(easy.source, hard.source), 512, train_source=easy.source)
    back.load_state_dict(json.loads(json.dumps(cur.state_dict())))
    assert [s.columns["pass_rate"] for s in back.annotate([easy, hard])] == [1.0, 0.5]


def _v1_state(rates: dict[str, float], stage: str) -> dict[str, object]:
    return {"version": 1, "stage_index": 0, "stage_name": stage, "steps_in_stage": 1, "last_step": 0,
            "window": [[1, 2]], "pass_rates": rates}


def test_older_pass_rates_load_for_one_source_and_are_refused_for_several(tmp_path: Path) -> None:
    sample = _source(tmp_path / "train.jsonl", ["1", "2"]).next_batch(2)[1]
    one = Curriculum(CurriculumConfig(), 512, train_source=sample.source)
    one.load_state_dict(_v1_state({"1": 0.25}, "default"))  # one source: the rates are its own
    assert one.annotate([sample])[0].columns["pass_rate"] == 0.25
    several = Curriculum(_mix("a.jsonl", "b.jsonl"), 512, train_source=sample.source)
    with pytest.raises(ValueError, match=r"version 1\) keys pass rates by sample id alone.*\(a.jsonl, b.jsonl\)"):
        several.load_state_dict(_v1_state({"1": 0.25}, "mix"))
