"""FSDP2 learner ranks (real torch.distributed, gloo, spawned processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.learner.sections import LearnerSections
from tests.learner.helpers import leave, random_batch


def _recipe(world: int, **learner: object) -> LearnerSections:
    return LearnerSections.of(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp32", "lr": 1e-3, "micro_batch_tokens": 40, "num_ranks": world, **learner},
        "rollout": {"routing_replay": "r2"} if learner.get("updates_per_batch", 1) > 1 else {},
        "algorithm": {"mismatch": {"type": "none"}},
    }))


def _train(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str | None) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init)
    metrics = [worker.train_step(random_batch(1024, seed=s)) for s in range(2)]
    if ckpt:
        worker.save_checkpoint(ckpt)
        metrics += [worker.train_step(random_batch(1024, seed=s)) for s in (2, 3)]
    if rank == 0:
        torch.save(metrics, out)
    leave(worker)


def _resume(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init)
    worker.load_checkpoint(ckpt)
    metrics = [worker.train_step(random_batch(1024, seed=s)) for s in (2, 3)]
    if rank == 0:
        torch.save(metrics, out)
    leave(worker)


def _spawn(fn, world: int, tmp: Path, tag: str, model_dir: Path, learner: dict, ckpt: str | None = None) -> list[dict]:
    out = tmp / f"{tag}.pt"
    mp.spawn(fn, args=(world, f"file://{tmp}/pg-{tag}", str(model_dir), str(out), learner, ckpt), nprocs=world)
    return torch.load(out)


def test_two_ranks_equal_one_rank(tmp_path: Path, tiny_dir: Path) -> None:
    one = _spawn(_train, 1, tmp_path, "one", tiny_dir, {})
    two = _spawn(_train, 2, tmp_path, "two", tiny_dir, {})
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert one[0]["loss"] != pytest.approx(one[1]["loss"])  # different batches really train differently


def test_checkpoint_resume_continues_identically(tmp_path: Path, tiny_dir: Path) -> None:
    """Save after 2 steps and train 2 more; a fresh group that loads the checkpoint must reproduce
    the last 2 steps exactly (model, AdamW moments and schedule restored)."""
    learner = {"schedule": "cosine", "warmup_steps": 1}
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    straight = _spawn(_train, 2, tmp_path, "straight", tiny_dir, learner, str(ckpt))
    resumed = _spawn(_resume, 2, tmp_path, "resumed", tiny_dir, learner, str(ckpt))
    for a, b in zip(straight[2:], resumed):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-7)
        assert a["lr"] == pytest.approx(b["lr"])


def test_several_updates_per_batch_use_old_policy_and_routing_replay(tmp_path: Path, tiny_dir: Path) -> None:
    metrics = _spawn(_train, 1, tmp_path, "ppo", tiny_dir, {"updates_per_batch": 2})
    # With old log-probs from before the first update, the second update sees ratios != 1.
    assert metrics[0]["policy/ratio_max"] > 1.0 or metrics[0]["policy/ratio_min"] < 1.0
