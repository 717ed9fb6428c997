"""`ling-rl export`: a training checkpoint -> a Hugging Face folder, on one local rank (DCP
re-shards the checkpoint of any number of ranks)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch.distributed as dist

from ling_rl.driver.checkpoint import DRIVER_STATE, CheckpointError
from ling_rl.config import load_recipe
from ling_rl.driver.session import learner_sections
from ling_rl.learner.worker import LearnerWorker


def export_checkpoint(ckpt: Path, out_dir: Path) -> Path:
    import json

    if not (ckpt / DRIVER_STATE).is_file():
        raise CheckpointError(f"{ckpt}: not a complete ling-rl checkpoint (no {DRIVER_STATE})")
    run_dir = ckpt.parent.parent
    recipe = load_recipe(run_dir / "recipe.yaml", ["learner.num_ranks=1"])
    model_dir = json.loads((ckpt / DRIVER_STATE).read_text())["model_dir"]
    worker = LearnerWorker(0, 1, learner_sections(recipe), model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        worker.setup(f"file://{tmp}/pg")
        try:
            worker.load_checkpoint(str(ckpt))
            worker.export_hf(str(out_dir), model_dir)
        finally:
            dist.destroy_process_group()
    return out_dir
