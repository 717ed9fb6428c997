"""Fixtures of the reward tests: one real local Ray for the session, rollouts, sample plugins."""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ling_rl.types import Rollout, Sample

PLUGIN_DIR = Path(__file__).parent / "plugins"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray (2 CPUs, 1 GiB object store, no dashboard) shared by the whole session."""
    import ray

    from ling_rl.cluster.config import ClusterConfig
    from ling_rl.cluster.ray_init import init_ray

    # Ray's unix sockets live under the temp dir and their paths must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    init_ray(ClusterConfig(num_cpus=2, object_store_gib=1.0), temp_dir=temp_dir)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_plugins() -> Iterator[Any]:
    """The decorated test plugins, imported (so registered) from tests/reward/plugins on sys.path."""
    sys.path.insert(0, str(PLUGIN_DIR))
    yield importlib.import_module("ling_test_rewards")
    sys.path.remove(str(PLUGIN_DIR))


def make_rollouts(groups: list[tuple[str, Any, list[str]]]) -> list[Rollout]:
    """Rollouts for (prompt, answer, completions) groups; the group index follows the list order."""
    rollouts = []
    for g, (prompt, answer, completions) in enumerate(groups):
        sample = Sample(id=f"s{g}", prompt=prompt, prompt_ids=[1, 2], columns={"answer": answer, "solution": answer})
        for text in completions:
            rollouts.append(Rollout(sample=sample, group=g, response_ids=[3] * len(text), response_text=text,
                                    inf_logprobs=[0.0] * len(text), finish_reason="stop", policy_version=0))
    return rollouts
