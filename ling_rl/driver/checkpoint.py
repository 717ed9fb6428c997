"""Run checkpoints: the learner's DCP state plus the driver's state (step, data cursor, RNG).

A checkpoint is written into `step-N.tmp/` and renamed to `step-N/` only when every part is on
disk, so a run killed mid-save resumes from the previous complete one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
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
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        learner.save_checkpoint(str(tmp))
        state = dict(driver_state, step=step + 1, python_rng=_encode_rng(random.getstate()))
        (tmp / DRIVER_STATE).write_text(json.dumps(state))
        tmp.rename(final)
        for old in self.complete()[: -self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _COMPLETE.match(p.name) and (p / DRIVER_STATE).is_file()]
        return sorted(found, key=lambda p: int(_COMPLETE.match(p.name).group(1)))  # type: ignore[union-attr]

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


def _encode_rng(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _decode_rng(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
