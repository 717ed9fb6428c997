"""Recipes for the tracking tests and an isolated offline W&B."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ling_rl.config import Recipe, parse_recipe


@pytest.fixture
def make_recipe() -> Callable[..., Recipe]:
    """`make_recipe(steps=3, **tracking)`: a minimal valid recipe with the given `tracking:` section."""

    def make(steps: int = 3, name: str = "track-test", **tracking: Any) -> Recipe:
        tracking.setdefault("wandb", {"enabled": False})
        return parse_recipe({
            "run": {"name": name, "steps": steps},
            "model": {"tiny": "tiny"},
            "data": {"train": "data/arith/train.jsonl"},
            "rewards": [{"name": "exact_answer"}],
            "tracking": tracking,
        })

    return make


@pytest.fixture(scope="session")
def wandb_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """W&B offline with its settings, cache and fallback run folders in a temp folder (never ~)."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            folder = home / var.lower()
            folder.mkdir()
            mp.setenv(var, str(folder))
        yield home
