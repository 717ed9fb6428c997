"""Fixtures of the reward tests: rollouts and sample plugins (Ray: the top-level `ray_session`)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ling_rl.types import Rollout, Sample

PLUGIN_DIR = Path(__file__).parent / "plugins"


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
