"""Checkpoints of one run folder and its trajectories: a start that does not continue the latest
checkpoint (resume: never, or an older one) sets the later ones aside; pruning keeps what was just
written; a checkpoint is fsynced before the rename that publishes it. Real files, no Ray: the
learner part of a checkpoint is a small file written by `FakeLearner`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ling_rl.driver.checkpoint import DRIVER_STATE, CheckpointError, Checkpointer
from ling_rl.learner.config import CheckpointConfig


class FakeLearner:
    """Stands in for the learner group's `save_checkpoint` (its DCP files) with one file of state."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def save_checkpoint(self, folder: str) -> None:
        (Path(folder) / "learner.bin").write_text(self.tag)


def _run(run_dir: Path, steps: list[int], tag: str, keep_last: int = 5) -> Checkpointer:
    """A run that saved after each of `steps` (1-based step counts), with metrics and recipe files."""
    ckpt = Checkpointer(run_dir, CheckpointConfig(keep_last=keep_last))
    for n in steps:
        ckpt.save(n - 1, FakeLearner(f"{tag}-{n}"), {"data": {}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "tag": tag}) + "\n" for s in range(max(steps))))
    (run_dir / "recipe.yaml").write_text(f"run: {tag}\n")
    return ckpt


def _tags(ckpt: Checkpointer) -> list[str]:
    return [(p / "learner.bin").read_text() for p in ckpt.complete()]


def test_resume_never_sets_the_old_run_aside(tmp_path: Path) -> None:
    _run(tmp_path, [2, 4], "old")
    (tmp_path / "hf_final").mkdir()
    ckpt = Checkpointer(tmp_path, CheckpointConfig(resume="never", keep_last=1))
    assert ckpt.to_resume() is None
    aside = ckpt.set_aside(None)
    assert aside is not None and aside.parent == tmp_path / "superseded"
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert (aside / "recipe.yaml").read_text() == "run: old\n" and len((aside / "metrics.jsonl").read_text().splitlines()) == 4
    assert (aside / "hf_final").is_dir() and not (tmp_path / "hf_final").exists()
    # The new trajectory saves step 2 again (it used to crash: `Directory not empty`), and keep_last=1
    # keeps it; auto-resume then continues the new run, not the abandoned step 4.
    ckpt.save(1, FakeLearner("new-2"), {"data": {}})
    assert _tags(ckpt) == ["new-2"]
    auto = Checkpointer(tmp_path, CheckpointConfig(resume="auto"))
    assert auto.to_resume() == tmp_path / "checkpoints" / "step-000002" and auto.set_aside(auto.to_resume()) is None


def test_resume_from_an_older_checkpoint_sets_aside_only_later_ones(tmp_path: Path) -> None:
    _run(tmp_path, [2, 4, 6], "old")
    older = tmp_path / "checkpoints" / "step-000004"
    ckpt = Checkpointer(tmp_path, CheckpointConfig(resume=str(older), keep_last=2))
    aside = ckpt.set_aside(ckpt.to_resume())
    assert aside is not None and [p.name for p in (aside / "checkpoints").iterdir()] == ["step-000006"]
    assert _tags(ckpt) == ["old-2", "old-4"]
    ckpt.save(4, FakeLearner("new-5"), {"data": {}})
    ckpt.save(5, FakeLearner("new-6"), {"data": {}})
    assert _tags(ckpt) == ["new-5", "new-6"]
    # A second start from the same checkpoint in the same second gets its own folder.
    again = Checkpointer(tmp_path, CheckpointConfig(resume=str(tmp_path / "checkpoints" / "step-000005")))
    second = again.set_aside(again.to_resume())
    assert second is not None and second != aside and _tags(again) == ["new-5"]


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    # A later checkpoint left in the folder (written before this run's start): keep_last used to
    # prune by step number and delete the step-2 checkpoint it had just written.
    ckpt = _run(tmp_path, [10], "stale", keep_last=1)
    written = ckpt.save(1, FakeLearner("new-2"), {"data": {}})
    assert written.is_dir() and (written / "learner.bin").read_text() == "new-2"


def test_saving_over_an_existing_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = _run(tmp_path, [2], "old")
    with pytest.raises(CheckpointError, match="step-000002 exists already"):
        ckpt.save(1, FakeLearner("new-2"), {"data": {}})
    assert _tags(ckpt) == ["old-2"]


def test_every_file_is_fsynced_before_the_rename_that_publishes_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A spy around the real os.fsync: which files were synced, and whether step-N existed yet.
    final = tmp_path / "checkpoints" / "step-000001"
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), final.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    Checkpointer(tmp_path, CheckpointConfig()).save(0, FakeLearner("a"), {"data": {}})
    before = {Path(path).name for path, published in synced if not published}
    assert {"learner.bin", DRIVER_STATE, "step-000001.tmp"} <= before
