"""The learner role as Ray actors: failures are loud and bounded, never a hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
import torch

from ling_rl.cluster.config import ClusterConfig, RoleResources
from ling_rl.config import parse_recipe
from ling_rl.learner.group import LearnerError, LearnerGroup
from ling_rl.driver.session import learner_sections
from tests.learner.helpers import random_batch


def _group(tiny_dir: Path, timeout: float = 120.0, threads: int | None = None) -> LearnerGroup:
    recipe = parse_recipe({"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
                           "learner": {"precision": "fp32", "num_ranks": 2}, "algorithm": {"mismatch": {"type": "none"}}})
    resources = RoleResources(num_cpus=0.5, threads=threads)
    return LearnerGroup(learner_sections(recipe), str(tiny_dir), ClusterConfig(learner=resources), call_timeout_s=timeout)


def test_ranks_started_without_waiting_report_a_failed_setup_when_waited_for(ray_session, tmp_path: Path) -> None:
    """`wait=False`: the ranks start and the constructor returns; a model folder that cannot be
    loaded fails `wait_started`, naming the rank and the phase, and the group is torn down."""
    recipe = parse_recipe({"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
                           "learner": {"precision": "fp32", "num_ranks": 2}})
    group = LearnerGroup(learner_sections(recipe), str(tmp_path / "no_model"),
                         ClusterConfig(learner=RoleResources(num_cpus=0.5)), call_timeout_s=120, wait=False)
    assert len(group.workers) == 2
    with pytest.raises(LearnerError, match=r"learner rank \d failed during setup"):
        group.wait_started()
    assert group.workers == []


def test_a_raising_rank_fails_the_call_with_its_rank_and_phase(ray_session, tiny_dir: Path) -> None:
    group = _group(tiny_dir, threads=2)
    # `cluster.learner.threads` sets each rank's torch threads, independently of Ray's num_cpus (0.5).
    assert ray.get([w.__ray_call__.remote(lambda self: torch.get_num_threads()) for w in group.workers]) == [2, 2]
    assert "loss" in group.train_step(random_batch(1024))
    bad = random_batch(1024)
    bad.unit_ids = bad.unit_ids.float()  # the loss refuses float unit ids on every rank
    start = time.monotonic()
    with pytest.raises(LearnerError, match=r"learner rank \d failed during train_step: ValueError: unit_ids must be an integer"):
        group.train_step(bad)
    assert time.monotonic() - start < 60
    assert group.workers == []  # torn down: the surviving rank would block in a collective


def test_a_dead_rank_is_reported_not_waited_for(ray_session, tiny_dir: Path) -> None:
    group = _group(tiny_dir)
    ray.kill(group.workers[1])
    start = time.monotonic()
    with pytest.raises(LearnerError, match="learner rank 1 died during train_step: .*Actor"):
        group.train_step(random_batch(1024))
    assert time.monotonic() - start < 60


def test_a_call_has_one_deadline_not_one_per_rank(ray_session, tmp_path: Path) -> None:
    """Rank 0 answers within the timeout, rank 1 after it: the call fails at its deadline naming
    rank 1 (a timeout restarted on every answer, the old wait, let such a call run N x timeout)."""
    recipe = parse_recipe({"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
                           "learner": {"precision": "fp32", "num_ranks": 2}})
    group = LearnerGroup(learner_sections(recipe), str(tmp_path / "unused"),
                         ClusterConfig(learner=RoleResources(num_cpus=0.5)), call_timeout_s=2.5, wait=False)
    assert ray.get([w.__ray_call__.remote(lambda self: self.rank) for w in group.workers], timeout=120) == [0, 1]
    start = time.monotonic()
    with pytest.raises(LearnerError, match=r"^learner rank 1: sleep did not finish within 2.5 s$"):
        group.wait([w.__ray_call__.remote(lambda self: time.sleep(1.5 + 2.0 * self.rank)) for w in group.workers],
                   "sleep")
    assert time.monotonic() - start < 3.4  # rank 1 answers at 3.5 s
    assert group.workers == []  # torn down
