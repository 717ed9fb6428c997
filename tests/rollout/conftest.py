"""Fixtures of the rollout tests: one local Ray and one two-engine `RolloutGroup` on the tiny model.

Package-scoped (not session-scoped) on purpose: the engines hold ~2 GB each and Ray CPU
reservations, released when the rollout tests end so later test packages can start their actors.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ling_rl.cluster.config import ClusterConfig, RoleResources
from ling_rl.rollout.config import RolloutConfig

MAX_MODEL_LEN = 512
_LAST = "test_failures.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the failure tests after the other rollout tests: one of them kills an engine of the
    shared group (a dedicated group would cost another ~60 s engine start on 2 cores)."""
    ours = [i for i, item in enumerate(items) if item.path.parent == Path(__file__).parent]
    if not ours:
        return
    block = [items[i] for i in ours]
    block = [it for it in block if it.path.name != _LAST] + [it for it in block if it.path.name == _LAST]
    for i, item in zip(ours, block):
        items[i] = item


@pytest.fixture(scope="package")
def cluster_cfg() -> Iterator[ClusterConfig]:
    """A local Ray (2 CPUs, 1 GiB object store, no dashboard); rollout engines reserve 0.5 CPU each so
    the shared group and a throwaway one-engine group fit together."""
    import ray

    from ling_rl.cluster.ray_init import init_ray

    cfg = ClusterConfig(num_cpus=2, object_store_gib=1.0, rollout=RoleResources(num_cpus=0.5))
    # Ray's unix sockets live under the temp dir and their paths must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    started_here = not ray.is_initialized()
    init_ray(cfg, temp_dir=temp_dir)
    yield cfg
    if started_here:
        ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="package")
def group(tiny_dir: Path, cluster_cfg: ClusterConfig) -> Iterator[object]:
    """Two data-parallel vLLM engines on the tiny model."""
    from ling_rl.rollout.group import RolloutGroup

    cfg = RolloutConfig(num_engines=2, seed=0, start_timeout_s=300, stall_timeout_s=120, call_timeout_s=300)
    g = RolloutGroup(str(tiny_dir), cfg, cluster_cfg, dtype="float32", max_model_len=MAX_MODEL_LEN)
    print(f"two engines started in {g.start_seconds:.1f} s")
    yield g
    g.shutdown()
