"""Generation calls are judged by progress, not by a fixed wall time: an engine that is slow but
still stepping outlives both the stall timeout and the fixed per-call deadline, and a stalled
one fails within the stall timeout, naming the engine.

Both cases share one two-engine group of `PacedEngine`s (tests/rollout/helpers.py, a module the
engine actors can import): real vLLM engines generating real tokens, whose step loop a test can
slow (a sleep before each vLLM step) or stop (a step that blocks).
The deadlines are the recipe keys, small here (4 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from ling_rl.cluster.config import ClusterConfig
from ling_rl.rollout.config import RolloutConfig
from ling_rl.rollout.engine import GenerationRequest
from ling_rl.rollout.group import RolloutError, RolloutGroup
from tests.rollout.conftest import MAX_MODEL_LEN
from tests.rollout.helpers import PacedEngine, prompts

pytestmark = pytest.mark.vllm

TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def paced(tiny_dir: Path, cluster_cfg: ClusterConfig) -> Iterator[RolloutGroup]:
    cfg = RolloutConfig(num_engines=2, seed=0, stall_timeout_s=TIMEOUT_S, call_timeout_s=TIMEOUT_S)
    g = RolloutGroup(str(tiny_dir), cfg, cluster_cfg, dtype="float32", max_model_len=MAX_MODEL_LEN,
                     engine_cls=PacedEngine)
    print(f"two paced engines started in {g.start_seconds:.1f} s")
    yield g
    g.shutdown()


def _requests(max_tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt_ids=p, n=2, seed=100 * i, max_tokens=max_tokens)
            for i, p in enumerate(prompts(2, seed=5))]


def test_a_slow_engine_that_keeps_stepping_outlives_the_deadlines(paced: RolloutGroup) -> None:
    ray.get([e.set_pace.remote(0.2) for e in paced.engines], timeout=30)
    before = ray.get([e.steps.remote() for e in paced.engines], timeout=30)
    started = time.monotonic()
    out = paced.generate(_requests(max_tokens=48), temperature=1.0, top_p=1.0, top_k=-1)
    took = time.monotonic() - started
    steps = [a - b for a, b in zip(ray.get([e.steps.remote() for e in paced.engines], timeout=30), before)]
    print(f"paced call: {took:.1f} s, engine steps {steps}")
    # Each engine took 48 steps (one prompt, 2 samples decoding together; the prefill step makes
    # the first token) at >= 0.2 s each: over twice the stall timeout and the fixed call deadline.
    assert min(steps) >= 48
    assert took > 2 * TIMEOUT_S
    assert [[(g.finish_reason, len(g.token_ids)) for g in gens] for gens in out] == [[("length", 48)] * 2] * 2


def test_a_stalled_engine_fails_within_the_stall_timeout_naming_it(paced: RolloutGroup) -> None:
    """Engine 0 runs at full speed; engine 1 stops stepping after 5 steps of this call."""
    steps = ray.get(paced.engines[1].steps.remote(), timeout=30)
    ray.get([paced.engines[0].set_pace.remote(0.0), paced.engines[1].set_pace.remote(0.0, steps + 5)], timeout=30)
    started = time.monotonic()
    with pytest.raises(RolloutError, match=rf"^rollout engine 1: generate made no progress for {TIMEOUT_S:g} s"):
        paced.generate(_requests(max_tokens=48), temperature=1.0, top_p=1.0, top_k=-1)
    took = time.monotonic() - started
    print(f"stalled engine reported after {took:.1f} s")
    # The stall timeout after its last step, plus a probe interval (1 s) and slack for a loaded box.
    assert took < TIMEOUT_S + 8
