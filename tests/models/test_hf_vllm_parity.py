"""vLLM on an `hf` model: the engine loads the tiny Qwen3 / Llama / Qwen3-MoE by its own architecture, the
weight sync streams the learner model's Hugging Face names into it, and after the sync the
engine's log-probs of its sampled tokens equal the learner's (fp32, per token) for plain and
processed (temperature, top-k, top-p) sampling. Real vLLM (CPU build). The Qwen3-MoE engine runs
with `routing_replay: r3`: the routes it captures are the learner's own routing of the same tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ling_rl.learner.logprobs import chunked_token_logprobs
from ling_rl.models.backend import resolve_backend
from ling_rl.models.tiny import init_tiny
from ling_rl.rollout.config import RolloutConfig
from ling_rl.rollout.engine import GenerationRequest, RolloutEngine
from ling_rl.weightsync.sender import write_buckets
from tests.rollout.helpers import prompts

pytestmark = pytest.mark.vllm


def _learner_logprobs(model, prompt: list[int], response: list[int], temperature: float, top_p: float,
                      top_k: int) -> torch.Tensor:
    """The learner's log-probs of `response`: the model's final hidden states through the chunked head."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        out = model(ids, head=lambda h, w, d: chunked_token_logprobs(h[:, :-1], w, ids[:, 1:], temperature, top_p, top_k))
    return out.head.logprobs[0, len(prompt) - 1 :].double()


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_moe"])
def test_engine_log_probs_equal_the_learner_after_a_sync(tmp_path: Path, arch: str) -> None:
    folder = init_tiny(tmp_path / arch, preset=arch, seed=0)
    backend = resolve_backend(folder)
    old, new = backend.load(folder), backend.load(folder)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    # R3 on the MoE model: the engine's captured routes (ling_rl/rollout/cpu_routes.py), after the sync too.
    replay = "r3" if arch == "qwen3_moe" else "none"
    engine = RolloutEngine(str(folder), RolloutConfig(seed=0, routing_replay=replay).model_dump(), "float32", 512)
    try:
        shipped = write_buckets(new, torch.float32, 1 << 20, str(tmp_path / "sync"), sender=True)
        assert len(shipped["paths"]) > 1  # several buckets: the stream's grouping is exercised
        engine.load_weights(shipped["paths"], version=1)
        ps = prompts(6, seed=11)
        worst, old_gap, tokens = 0.0, 0.0, 0
        same_routes = routed = 0
        for temperature, top_p, top_k in ((1.0, 1.0, -1), (0.8, 0.9, 50)):
            reqs = [GenerationRequest(prompt_ids=p, n=2, seed=50_000 + 10 * i, max_tokens=16) for i, p in enumerate(ps)]
            for prompt, gens in zip(ps, engine.generate(reqs, temperature, top_p, top_k), strict=True):
                for gen in gens:
                    theirs = torch.tensor(gen.logprobs, dtype=torch.float64)
                    ours = _learner_logprobs(new, prompt, gen.token_ids, temperature, top_p, top_k)
                    worst = max(worst, (ours - theirs).abs().max().item())
                    stale = _learner_logprobs(old, prompt, gen.token_ids, temperature, top_p, top_k)
                    old_gap = max(old_gap, (stale - theirs).abs().max().item())
                    tokens += len(gen.token_ids)
                    if replay == "r3":
                        same, total = _routes_agree(new, prompt, gen)
                        same_routes, routed = same_routes + same, routed + total
    finally:
        del engine
    print(f"hf {arch} parity over {tokens} sampled tokens after a sync: max |dlogp| = {worst:.2e} (old weights: {old_gap:.2f})")
    assert tokens > 100
    assert worst <= 1e-5
    assert old_gap > 0.05  # the engine really holds the synced weights
    if replay == "r3":
        print(f"hf {arch} R3: engine routes equal the learner's on {same_routes}/{routed} positions")
        assert routed > 100 and same_routes / routed > 0.99


def _routes_agree(model, prompt: list[int], gen) -> tuple[int, int]:
    """Positions whose experts (as a set) in the engine's routes equal the learner model's own
    routing of prompt + response, and positions routed (all but the last token)."""
    routes = gen.routed_experts
    k = model.routers[0].top_k
    assert routes.shape == (len(prompt) + len(gen.token_ids) - 1, 1, k)  # one MoE layer (decoder layer 1)
    with torch.no_grad():
        own = model(torch.tensor([prompt + gen.token_ids]), return_routed_experts=True).routed_experts[0]
    engine = torch.from_numpy(routes[:, 0].astype("int64"))
    return int((own[: len(routes)].sort(-1).values == engine.sort(-1).values).all(-1).sum()), len(routes)
