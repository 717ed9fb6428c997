"""Weight sync: the engines sample from exactly the weights the project wrote, with no stale KV."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ling_rl.models.hf_io import inference_weights, load_model, write_safetensors_atomic
from ling_rl.models.ling_moe import LingForCausalLM
from ling_rl.rollout.config import RolloutConfig
from ling_rl.rollout.engine import GenerationRequest
from ling_rl.weightsync.methods import SYNC_METHODS
from ling_rl.weightsync.sender import InProcessLearner
from tests.rollout.helpers import max_logprob_gap, prompts

pytestmark = pytest.mark.vllm


def _sync(group, model: LingForCausalLM, path: Path, version: int) -> float:
    write_safetensors_atomic(inference_weights(model.state_dict(), model.config), path)
    started = time.perf_counter()
    group.load_weights(str(path), version)
    return time.perf_counter() - started


@pytest.fixture
def sync_path(group, tiny_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """A weight file path; the engines get the original weights back afterwards (the group is shared)."""
    path = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    path = path / f"ling_rl_test_sync_{tmp_path.name}.safetensors"
    yield path
    _sync(group, load_model(tiny_dir), path, 0)
    path.unlink(missing_ok=True)


def test_engines_sample_from_the_synced_weights(group, tiny_dir: Path, sync_path: Path) -> None:
    old = load_model(tiny_dir)
    ps = prompts(4, seed=5)
    # The last prompt spans several KV blocks, so it is prefix-cached (old weights) before the sync.
    ps[-1] = prompts(1, seed=6, min_len=300, max_len=300)[0]
    reqs = [GenerationRequest(prompt_ids=p, n=2, seed=20_000 + 10 * i, max_tokens=8) for i, p in enumerate(ps)]
    before = group.generate(reqs, 1.0, 1.0, -1)
    assert max_logprob_gap(old, ps, before) < 1e-3

    new = load_model(tiny_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        new.model.layers[1].mlp.gate.expert_bias.add_(0.05 * torch.randn(new.config.num_experts, generator=g))
    seconds = _sync(group, new, sync_path, version=1)
    print(f"weight sync of the tiny model into 2 engines: {seconds * 1000:.0f} ms")
    assert group.version == 1

    after = group.generate(reqs, 1.0, 1.0, -1)
    # Every weight (routed experts included) made it in, and no stale prefix KV was reused.
    assert max_logprob_gap(new, ps, after) < 1e-3
    assert max_logprob_gap(old, ps, after) > 0.05
    assert max_logprob_gap(new, ps[-1:], after[-1:]) < 1e-3


def test_a_model_that_emits_eos_finishes_with_stop(group, tiny_dir: Path, sync_path: Path) -> None:
    """A stop case needs a model that emits EOS: give every token embedding a large constant
    feature and the EOS row of lm_head a weight on it, so EOS takes ~20% of the mass per step."""
    model = load_model(tiny_dir)
    eos = model.config.eos_token_id
    with torch.no_grad():
        model.model.word_embeddings.weight[:, 0] += 30.0
        model.lm_head.weight[eos, 0] = 0.5
    _sync(group, model, sync_path, version=2)
    ps = prompts(2, seed=7)
    reqs = [GenerationRequest(prompt_ids=p, n=8, seed=30_000 + 10 * i, max_tokens=24) for i, p in enumerate(ps)]
    out = group.generate(reqs, 1.0, 1.0, -1)
    gens = [g for gs in out for g in gs]
    stopped = [g for g in gens if g.finish_reason == "stop"]
    assert stopped, "expected some samples to end with EOS"
    for g in stopped:
        # The EOS token is part of the response (and has its log-prob): the learner trains on it.
        assert g.token_ids[-1] == eos and eos not in g.token_ids[:-1]
        assert len(g.logprobs) == len(g.token_ids) < 24
    for g in gens:
        if g.finish_reason == "length":
            assert len(g.token_ids) == 24 and eos not in g.token_ids
    assert max_logprob_gap(model, ps, out) < 1e-3


@pytest.mark.parametrize("method", ["object_store", "shm_file"])
def test_sync_methods_bring_the_learner_weights_into_the_engines(group, tiny_dir: Path, sync_path: Path, method: str) -> None:
    """`object_store` is the path for engines on another node than learner rank 0: the buckets go
    through Ray's object store and each engine writes them on its own node (here forced on one)."""
    old = load_model(tiny_dir)
    new = load_model(tiny_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    cfg = RolloutConfig(weight_sync={"method": method, "bucket_mib": 1, "dir": str(sync_path.parent)})
    sync = SYNC_METHODS[method](InProcessLearner(new), group, cfg, "float32", f"test-{sync_path.stem}")
    sync.setup()
    metrics = sync.sync(version=7)
    assert group.version == 7
    assert set(metrics) == {"sync/gather_s", "sync/transfer_s", "sync/load_s"} and all(v > 0 for v in metrics.values())
    ps = prompts(3, seed=9)
    out = group.generate([GenerationRequest(prompt_ids=p, n=2, seed=40_000 + 10 * i, max_tokens=8) for i, p in enumerate(ps)],
                         1.0, 1.0, -1)
    assert max_logprob_gap(new, ps, out) < 1e-3
    assert max_logprob_gap(old, ps, out) > 0.05
    assert not list(sync_path.parent.glob(f"ling-rl-*{sync_path.stem}*")), "bucket files left behind"
