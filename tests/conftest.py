"""Shared fixtures. Expensive ones (tiny model folder, vLLM engine) are session-scoped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Ling MoE + tokenizer folder written by the project (with an MTP layer)."""
    from ling_rl.models.tiny import init_tiny

    return init_tiny(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def vllm_engine(tiny_dir: Path) -> Iterator[object]:
    """One real vLLM (CPU) engine on the tiny folder, shared by the whole session."""
    from ling_rl.rollout.vllm_engine import build_llm

    llm = build_llm(tiny_dir, dtype="float32", seed=0, max_model_len=512)
    yield llm
    del llm


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray (2 logical CPUs, 1 GiB object store, no dashboard) for the session."""
    import shutil
    import tempfile

    import ray

    from ling_rl.cluster.config import ClusterConfig
    from ling_rl.cluster.ray_init import init_ray

    # Ray's unix sockets live under the temp dir and their paths must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    started_here = not ray.is_initialized()
    init_ray(ClusterConfig(num_cpus=2, object_store_gib=1.0), temp_dir=temp_dir)
    yield
    if started_here:
        ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
