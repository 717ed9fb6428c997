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
