"""`ling-rl export CKPT OUT` (and `ling-rl eval CKPT`): a run's checkpoint -> a Hugging Face folder.

The driver's state file names the model folder the run trained (config, tokenizer); the learner's
DCP folder holds the weights, of which `ling_rl.learner.export` reads the model entries only.
"""

from __future__ import annotations

import json
from pathlib import Path

from ling_rl.driver.checkpoint import DRIVER_STATE, CheckpointError


def export_checkpoint(ckpt: Path, out_dir: Path) -> Path:
    """Write checkpoint `ckpt`'s weights as a Hugging Face folder `out_dir`. Raises
    `CheckpointError` for an incomplete checkpoint or a missing source folder, and
    `ModelFolderError` for a target that holds anything but a previous export."""
    from ling_rl.learner.export import LEARNER_DIR, export_weights
    from ling_rl.models.hf_io import check_replaceable

    ckpt, out_dir = Path(ckpt), Path(out_dir)
    if not (ckpt / DRIVER_STATE).is_file() or not (ckpt / LEARNER_DIR).is_dir():
        raise CheckpointError(f"{ckpt}: not a complete ling-rl checkpoint (no {DRIVER_STATE} or {LEARNER_DIR}/)")
    check_replaceable(out_dir)  # a user's folder is refused at once, whatever else is wrong
    source = Path(json.loads((ckpt / DRIVER_STATE).read_text())["model_dir"])
    if not (source / "config.json").is_file():
        raise CheckpointError(f"{ckpt}: the model folder it trained, {source} (recorded in {DRIVER_STATE}), has no "
                              "config.json: the export needs its config and tokenizer files")
    return export_weights(ckpt / LEARNER_DIR, source, out_dir)
