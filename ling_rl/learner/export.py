"""The learner's part of `ling-rl export`: the model weights of a checkpoint -> a Hugging Face
folder, reading the model's entries only (`ling_rl/commands/export.py` finds the checkpoint's parts).

    backend = resolve_backend(source)   # the model backend of the source folder (ling_rl.models.backend)
    model = backend.meta_model(source)  # the checkpoint's source folder: structure, no memory
    model.to_empty(device="cpu")        # fp32, whole: the one copy of the weights the export holds
    dcp.load({"model": model.state_dict()}, checkpoint_id=CKPT/learner)   # in place, model keys only
    backend.save(model, out_dir, tokenizer_dir=source)

DCP reads just the `model` entries that `LearnerWorker.save_checkpoint` wrote (re-sharding those
of any number of ranks) into the model's own tensors: the optimizer state beside them (AdamW:
8 bytes per parameter) and gradients are never materialised, and no learner, process group or
recipe is needed. Peak memory is about the fp32 model (bench/export_memory.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from ling_rl.models.backend import resolve_backend
from ling_rl.models.hf_io import check_replaceable

LEARNER_DIR = "learner"
"""The learner's DCP folder inside a checkpoint folder (written by `LearnerWorker.save_checkpoint`)."""


def export_weights(learner_dir: Path, source: Path, out_dir: Path, backend: str = "auto") -> Path:
    """Write the model weights of the DCP folder `learner_dir` (a model of `source`'s config) as a
    Hugging Face folder `out_dir`: fp32 (the master weights), with `source`'s tokenizer files and
    generation config. A target holding anything but a previous export raises `ModelFolderError`
    before anything is read. `backend`: the run's `model.backend`."""
    check_replaceable(out_dir)
    model_backend = resolve_backend(source, backend)
    model = model_backend.meta_model(source)
    model.to_empty(device="cpu")
    model_backend.init_computed_buffers(model, "cpu")  # not stored in checkpoints
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # the embedding's own tensor; the checkpoint holds it once
    # no_dist: this process reads every rank's shards itself, with or without a process group.
    with torch.no_grad():
        dcp.load({"model": state}, checkpoint_id=str(learner_dir), no_dist=True)
    return model_backend.save(model, out_dir, tokenizer_dir=source, state=state)
