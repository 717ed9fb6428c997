"""`ling-rl export`: a checkpoint written by a real one-rank learner becomes a Hugging Face folder
holding exactly the learner's weights; the export reads the checkpoint's model entries only (no
optimizer state, no recipe), and never replaces a folder that is not a previous export.
(Peak memory of the export: bench/export_memory.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ling_rl.config import parse_recipe
from ling_rl.driver.checkpoint import DRIVER_STATE
from ling_rl.driver.session import learner_sections
from ling_rl.commands.export import export_checkpoint
from ling_rl.models.hf_io import load_model
from ling_rl.models.ling_config import ModelFolderError
from tests.learner.helpers import random_batch


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A run folder with one checkpoint of a one-rank gloo learner after one train step (AdamW
    state included), and the learner's full state at that point."""
    import torch.distributed as dist
    import yaml

    from ling_rl.learner.worker import LearnerWorker

    run_dir = tmp_path_factory.mktemp("run")
    tree = {"model": {"path": str(tiny_dir), "dtype": "float32"}, "data": {"train": "x.jsonl"},
            "rewards": [{"name": "exact_answer"}], "algorithm": {"mismatch": {"type": "none"}},
            "learner": {"device": "cpu", "precision": "fp32", "num_ranks": 1, "lr": 1e-2, "micro_batch_tokens": 40}}
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(tree))
    worker = LearnerWorker(0, 1, learner_sections(parse_recipe(tree)), str(tiny_dir))
    worker.setup(f"file://{run_dir}/pg")
    try:
        worker.train_step(random_batch(worker.config.vocab_size, seed=0))
        ckpt = run_dir / "checkpoints" / "step-000001"
        ckpt.mkdir(parents=True)
        worker.save_checkpoint(str(ckpt))
        state = {k: v.clone() for k, v in worker._full_state().items()}
    finally:
        dist.destroy_process_group()
    (ckpt / DRIVER_STATE).write_text(json.dumps({"model_dir": str(tiny_dir)}))
    return ckpt, state


def test_export_holds_the_learners_weights(tmp_path: Path, tiny_dir: Path, trained) -> None:
    ckpt, state = trained
    out = export_checkpoint(ckpt, tmp_path / "hf")
    exported = load_model(out).state_dict()
    assert set(exported) == set(state)
    changed = [k for k in state if not torch.equal(state[k], load_model(tiny_dir).state_dict()[k])]
    assert changed, "the train step changed no weight: the test would not see a stale export"
    for name, tensor in state.items():
        assert torch.equal(exported[name], tensor), name
    assert (out / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()


def test_export_reads_model_weights_only(tmp_path: Path, trained) -> None:
    """A copy of the checkpoint whose DCP folder holds the model entries alone, in a run folder
    without recipe.yaml, exports the same weights: nothing else is read."""
    import torch.distributed.checkpoint as dcp

    ckpt, state = trained
    bare = tmp_path / "bare-run" / "checkpoints" / ckpt.name
    bare.mkdir(parents=True)
    shutil.copy(ckpt / DRIVER_STATE, bare / DRIVER_STATE)
    dcp.save({"model": dict(state)}, checkpoint_id=str(bare / "learner"), no_dist=True)
    exported = load_model(export_checkpoint(bare, tmp_path / "hf")).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in state.items())


def test_export_command_refuses_the_run_folder(trained) -> None:
    """`ling-rl export CKPT RUN_DIR` (a slip for RUN_DIR/hf) names what is there and deletes nothing."""
    from typer.testing import CliRunner

    from ling_rl.commands.cli import app

    ckpt, _ = trained
    run_dir = ckpt.parent.parent
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    result = CliRunner().invoke(app, ["export", str(ckpt), str(run_dir)])
    assert result.exit_code == 1, result.output
    assert "not a model folder written by ling-rl" in result.output and "checkpoints/" in result.output
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before


def test_export_names_an_incomplete_checkpoint_then_a_users_target(tmp_path: Path) -> None:
    from ling_rl.driver.checkpoint import CheckpointError

    ckpt = tmp_path / "step-000001"
    ckpt.mkdir()
    with pytest.raises(CheckpointError, match="not a complete ling-rl checkpoint"):
        export_checkpoint(ckpt, tmp_path / "hf")
    (ckpt / DRIVER_STATE).write_text(json.dumps({"model_dir": str(tmp_path / "gone")}))
    (ckpt / "learner").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        export_checkpoint(ckpt, tmp_path / "hf")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "data.csv").write_text("1,2")
    with pytest.raises(ModelFolderError, match="it holds data.csv"):  # checked before anything is read
        export_checkpoint(ckpt, tmp_path / "user")
    assert (tmp_path / "user" / "data.csv").read_text() == "1,2"
