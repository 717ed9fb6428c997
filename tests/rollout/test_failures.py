"""Failures are loud and fast: a dead engine or one that cannot start raises `RolloutError`.

These run last among the rollout tests (see conftest): the kill test leaves the shared group with
a dead engine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ling_rl.cluster.config import ClusterConfig
from ling_rl.rollout.config import RolloutConfig
from ling_rl.rollout.engine import GenerationRequest
from ling_rl.rollout.group import RolloutError, RolloutGroup

pytestmark = pytest.mark.vllm


def test_engine_that_cannot_start_reports_its_error(tmp_path: Path, cluster_cfg: ClusterConfig, group) -> None:
    """Started without waiting (as the session starts its roles), the error comes from `wait_started`."""
    missing = tmp_path / "no_such_model"
    started = time.monotonic()
    starting = RolloutGroup(str(missing), RolloutConfig(num_engines=1, start_timeout_s=120), cluster_cfg,
                            dtype="float32", max_model_len=256, wait=False)
    with pytest.raises(RolloutError, match=r"rollout engine 0 died during start") as info:
        starting.wait_started()
    assert starting.engines == []  # killed
    # The actor's own exception text comes through (vLLM/transformers complain about the path).
    assert "no_such_model" in str(info.value)
    print(f"start failure reported in {time.monotonic() - started:.1f} s")


def test_killed_engine_raises_naming_it(group) -> None:
    import ray

    reqs = [GenerationRequest(prompt_ids=[11, 12, 13], n=1, seed=10 * i, max_tokens=2) for i in range(2)]
    assert len(group.generate(reqs, 1.0, 1.0, -1)) == 2
    ray.kill(group.engines[0], no_restart=True)
    started = time.monotonic()
    # Engine 1 is alive and answers; the group still fails, and names engine 0.
    with pytest.raises(RolloutError, match=r"rollout engine 0 died during generate"):
        group.generate(reqs, 1.0, 1.0, -1)
    assert time.monotonic() - started < 10
