"""Reading data sources: the split of a folder / hub dataset (`data.splits`), and CSV cells as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ling_rl.config import RecipeError, load_recipe
from ling_rl.curriculum.config import DataConfig
from ling_rl.curriculum.data import DatasetError, PromptSource, load_rows

ROOT = Path(__file__).resolve().parents[2]


def _jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_dataset_with_only_a_test_split_loads(tmp_path: Path) -> None:
    # Like HuggingFaceH4/MATH-500 (recipes/evo_cot.yaml's eval set): only `test`. It used to be
    # asked for split "train" and fail with `ValueError: Unknown split "train"`.
    _jsonl(tmp_path / "math500" / "test.jsonl", [{"prompt": "1+1", "answer": "2"}, {"prompt": "2+2", "answer": "4"}])
    assert [r["answer"] for r in load_rows(str(tmp_path / "math500"))] == ["2", "4"]
    source = PromptSource(DataConfig(train=str(tmp_path / "math500")), None, 64)
    assert [s.columns["answer"] for s in source.samples] == ["2", "4"]


def test_split_is_chosen_per_source(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    _jsonl(folder / "train.jsonl", [{"prompt": "t", "answer": "train"}])
    _jsonl(folder / "test.jsonl", [{"prompt": "t", "answer": "test"}])
    assert load_rows(str(folder))[0]["answer"] == "train"  # several splits: train by default
    assert load_rows(str(folder), split="test")[0]["answer"] == "test"
    cfg = DataConfig(train=str(folder), splits={str(folder): "test"})
    assert PromptSource(cfg, None, 64).samples[0].columns["answer"] == "test"
    with pytest.raises(DatasetError, match=r"no split 'validation' \(data.splits\); its splits: (train, test|test, train)"):
        load_rows(str(folder), split="validation")


def test_several_splits_without_train_must_be_named(tmp_path: Path) -> None:
    folder = tmp_path / "evalonly"
    _jsonl(folder / "validation.jsonl", [{"prompt": "v"}])
    _jsonl(folder / "test.jsonl", [{"prompt": "t"}])
    with pytest.raises(DatasetError, match="none is 'train'; name the one to use in data.splits"):
        load_rows(str(folder))


def test_a_single_file_takes_no_split(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"prompt": "p"}])
    with pytest.raises(DatasetError, match="a single file has no splits"):
        load_rows(str(tmp_path / "a.jsonl"), split="test")


def test_csv_cells_are_read_as_written(tmp_path: Path) -> None:
    # Type guessing turned "007" into 7.0 and "NA" / a blank cell into None (the row then went unscored).
    path = tmp_path / "q.csv"
    path.write_text('id,prompt,answer\n007,"Agent, code?",007\n2,Not available?,NA\n3,Nothing?,\n4,Half,0.50\n')
    rows = load_rows(str(path))
    assert [r["answer"] for r in rows] == ["007", "NA", "", "0.50"]
    assert [r["id"] for r in rows] == ["007", "2", "3", "4"] and rows[0]["prompt"] == "Agent, code?"
    assert [s.id for s in PromptSource(DataConfig(train=str(path)), None, 64).samples] == ["007", "2", "3", "4"]
    assert len(load_rows(str(path), max_rows=2)) == 2


def test_csv_row_with_the_wrong_number_of_cells_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("prompt,answer\na,1\nb,2,extra\n")
    with pytest.raises(DatasetError, match=r"bad.csv: line 3 does not have the 2 cells its header names"):
        load_rows(str(path))


def test_splits_must_name_a_source_of_the_recipe() -> None:
    with pytest.raises(RecipeError, match=r"data.splits.nowhere/x.*names no data source of the recipe"):
        load_recipe(ROOT / "recipes" / "quickstart.yaml", ["data.splits={nowhere/x: test}"])
    load_recipe(ROOT / "recipes" / "quickstart.yaml", ["data.splits={data/arith/test.jsonl: x}", "eval.every=1",
                                                       "eval.data=data/arith/test.jsonl"])
