"""DFT warm start: the two-mode SFT data and the learner's supervised step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.curriculum.dft import DFTConfig, DFTData
from tests.learner.helpers import leave

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(tiny_dir), trust_remote_code=True)


def _rows(n: int = 40) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "data/arith/train.jsonl").read_text().splitlines()[:n]]


def test_two_modes_and_loss_only_on_the_response(tokenizer) -> None:
    cfg = DFTConfig(enabled=True, batch_size=16, think_on_fraction=0.5)
    data = DFTData(_rows(), cfg, tokenizer, "prompt", "answer", "train.jsonl")
    texts = [tokenizer.decode(p + r) for p, r in data.examples]
    think = [t for t in texts if t.startswith("detailed think on")]
    instant = [t for t in texts if t.startswith("detailed think off")]
    assert think and instant and len(think) + len(instant) == len(texts)
    assert all("<think>" in t and "</think><answer>" in t and t.endswith("</answer><|endoftext|>") for t in think)
    assert all("<think>" not in t and t.endswith("<|endoftext|>") for t in instant)
    batch = data.batch(tokenizer.pad_token_id)
    for row in range(len(batch)):
        ids, mask = batch.input_ids[row], batch.response_mask[row]
        assert tokenizer.decode(ids[mask]).endswith("<|endoftext|>")
        assert "Question:" not in tokenizer.decode(ids[mask])  # the prompt is not trained on


def test_rows_missing_a_column_name_the_row(tokenizer) -> None:
    rows = _rows(3)
    del rows[2]["solution"]
    with pytest.raises(ValueError, match=r"train.jsonl: row 2: DFT needs column 'solution'"):
        DFTData(rows, DFTConfig(enabled=True), tokenizer, "prompt", "answer", "train.jsonl")


def _sft(rank: int, world: int, init: str, model_dir: str, out: str) -> None:
    import transformers

    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker

    tok = transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    recipe = parse_recipe({"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
                           "learner": {"precision": "fp32", "num_ranks": world}})
    worker = LearnerWorker(rank, world, learner_sections(recipe), model_dir)
    worker.setup(init)
    data = DFTData(_rows(64), DFTConfig(enabled=True, batch_size=16), tok, "prompt", "answer", "train")
    losses = [worker.sft_step(data.batch(tok.pad_token_id), lr=3e-3)["dft/loss"] for _ in range(25)]
    if rank == 0:
        torch.save(losses, out)
    leave(worker)


def test_sft_step_lowers_the_loss(tmp_path: Path, tiny_dir: Path) -> None:
    mp.spawn(_sft, args=(1, f"file://{tmp_path}/pg", str(tiny_dir), str(tmp_path / "l.pt")), nprocs=1)
    losses = torch.load(tmp_path / "l.pt")
    assert losses[0] > 5.0  # a random model: ~log(vocab)
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]
