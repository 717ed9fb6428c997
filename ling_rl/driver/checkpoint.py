"""Run checkpoints: the learner's DCP state plus the driver's state (step, data cursor, RNG).

A checkpoint is written into `step-N.tmp/`, every file of it fsynced, and renamed to `step-N/`
only then, so a run killed (or a machine that loses power) mid-save resumes from the previous
complete one.

A start that does not continue the folder's latest checkpoint (`checkpoint.resume: never`, or a
path to an older one) abandons the trajectory the later checkpoints belong to: `set_aside` moves
them, with a copy of that run's metrics.jsonl and recipe.yaml, into `superseded/<time>/`, so that
saving, pruning, auto-resume and the Ctrl-C save never pick up a checkpoint of the abandoned run.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ling_rl.learner.config import CheckpointConfig

class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used."""


_COMPLETE = re.compile(r"^step-(\d+)$")
DRIVER_STATE = "driver_state.json"


class Checkpointer:
    def __init__(self, run_dir: Path, cfg: CheckpointConfig) -> None:
        self.root = run_dir / "checkpoints"
        self.cfg = cfg

    def due(self, step: int, last_step: int) -> bool:
        """Whether to save after `step` (0-based) of a run whose final step is `last_step`."""
        return step == last_step or (self.cfg.every > 0 and (step + 1) % self.cfg.every == 0)

    def save(self, step: int, learner: Any, driver_state: dict[str, Any]) -> Path:
        final = self.root / f"step-{step + 1:06d}"
        if final.exists():  # `set_aside` at the start moved every later checkpoint away
            raise CheckpointError(f"{final} exists already: this run would overwrite a checkpoint it did not write")
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        learner.save_checkpoint(str(tmp))
        state = dict(driver_state, step=step + 1, python_rng=_encode_rng(random.getstate()))
        (tmp / DRIVER_STATE).write_text(json.dumps(state))
        _fsync_tree(tmp)  # the rename publishes the checkpoint: its contents must be on disk first
        tmp.rename(final)
        _fsync_dir(self.root)
        # Only checkpoints older than the one just written are pruned, never it or a later one.
        older = [p for p in self.complete() if _step_of_name(p) < step + 1]
        for old in older[: max(0, len(older) - (self.cfg.keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def set_aside(self, resume_from: Path | None) -> Path | None:
        """Move the checkpoints this start does not continue (those after `resume_from`'s step, or
        all of them when it starts from scratch, or from a checkpoint of another folder) into
        `superseded/<UTC time>/checkpoints/`, with a copy of the folder's metrics.jsonl and
        recipe.yaml as they were, and its hf_final export; returns that folder (None: nothing to move)."""
        start = 0 if resume_from is None else self.step_of(resume_from)
        same = None if resume_from is None else resume_from.resolve()
        stale = [p for p in self.complete() if _step_of_name(p) > start or (_step_of_name(p) == start and p.resolve() != same)]
        if not stale:
            return None
        run_dir = self.root.parent
        folder = run_dir / "superseded" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while folder.exists():  # two starts within one second
            folder = folder.with_name(folder.name + "-1")
        (folder / "checkpoints").mkdir(parents=True)
        for name in ("metrics.jsonl", "recipe.yaml"):  # copies: a resumed run keeps its earlier lines
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, folder / name)
        if (run_dir / "hf_final").exists():  # the abandoned run's final model, not this run's
            (run_dir / "hf_final").rename(folder / "hf_final")
        for ckpt in stale:
            ckpt.rename(folder / "checkpoints" / ckpt.name)
        return folder

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _COMPLETE.match(p.name) and (p / DRIVER_STATE).is_file()]
        return sorted(found, key=_step_of_name)

    def to_resume(self) -> Path | None:
        if self.cfg.resume == "never":
            return None
        if self.cfg.resume == "auto":
            done = self.complete()
            return done[-1] if done else None
        path = Path(self.cfg.resume)
        if not (path / DRIVER_STATE).is_file():
            raise CheckpointError(f"checkpoint.resume: {path} is not a complete ling-rl checkpoint (no {DRIVER_STATE})")
        return path

    @staticmethod
    def step_of(ckpt: Path) -> int:
        """The number of RL steps a complete checkpoint holds (its driver state only; no RNG is set)."""
        return int(json.loads((ckpt / DRIVER_STATE).read_text())["step"])

    @staticmethod
    def driver_state(ckpt: Path) -> dict[str, Any]:
        state = json.loads((ckpt / DRIVER_STATE).read_text())
        random.setstate(_decode_rng(state.pop("python_rng")))
        return state


def _step_of_name(ckpt: Path) -> int:
    return int(_COMPLETE.match(ckpt.name).group(1))  # type: ignore[union-attr]


def _fsync_tree(folder: Path) -> None:
    for parent, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(parent, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(parent))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_rng(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _decode_rng(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
