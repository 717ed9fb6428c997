"""Activation checkpointing per decoder layer (`learner.activation_checkpointing`, issue 11 item 3):
the same gradients as without, the routing of the first pass replayed in the recomputation and
recorded once; and, on 2 gloo FSDP2 ranks, chunked log-probs + checkpointing train like the plain path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.learner.logprobs import chunked_token_logprobs
from ling_rl.learner.sections import LearnerSections
from ling_rl.driver.session import learner_sections
from ling_rl.models.tiny import TINY, build_tiny_model
from tests.learner.helpers import leave, random_batch


def _loss_and_grads(model, ids: torch.Tensor, checkpoint_layers: bool, replay: list[torch.Tensor] | None = None,
                    between=None):
    """A loss over the policy and MTP log-probs; `between(model)` runs after the forward, before backward."""
    def head(hidden: torch.Tensor, weight: torch.Tensor, depth: int):
        return chunked_token_logprobs(hidden[:, :-1], weight, ids[:, depth + 1 :], temperature=0.8, chunk_tokens=6)

    model.zero_grad()
    out = model(ids, routed_experts=replay, return_routed_experts=True, with_mtp=True, head=head,
                checkpoint_layers=checkpoint_layers)
    loss = out.head.logprobs.square().mean() + sum(h.logprobs.mean() for h in out.mtp_head)
    if between is not None:
        between(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, out.routed_experts


def _assert_same(a, b) -> None:
    (loss_a, grads_a, routing_a), (loss_b, grads_b, routing_b) = a, b
    assert loss_a == loss_b
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        tol = 1e-6 * max(1.0, float(grads_a[name].abs().max()))
        assert float((grads_a[name] - grads_b[name]).abs().max()) <= tol, name
    assert len(routing_a) == len(routing_b) == MOE_LAYERS  # recorded once per layer, not again in the recomputation
    for x, y in zip(routing_a, routing_b, strict=True):
        assert torch.equal(x, y)


MOE_LAYERS = sum(TINY.is_moe_layer(i) for i in range(TINY.num_hidden_layers))
IDS = torch.randint(0, TINY.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))


def test_checkpointing_gives_the_same_gradients_and_routing() -> None:
    model = build_tiny_model(TINY, seed=0)
    _assert_same(_loss_and_grads(model, IDS, False), _loss_and_grads(model, IDS, True))


def test_checkpointing_with_routing_replay() -> None:
    model = build_tiny_model(TINY, seed=0)
    _, _, recorded = _loss_and_grads(model, IDS, False)
    replay = [r.flip(-1) for r in recorded]  # the same experts in another order: another valid routing
    without = _loss_and_grads(model, IDS, False, replay=replay)
    with_ckpt = _loss_and_grads(model, IDS, True, replay=replay)
    _assert_same(without, with_ckpt)
    assert all(torch.equal(r, p) for r, p in zip(with_ckpt[2], replay, strict=True))


def test_the_recomputation_replays_the_first_passs_routing() -> None:
    """Between forward and backward, a new expert bias would make the router choose other experts;
    the recomputation must still use the experts of the forward (as the plain path's saved
    activations do), so gradients match the plain path's under the same change."""
    def shift_bias(model) -> None:
        with torch.no_grad():
            for layer in model.trunk_layers:
                if layer.is_moe:
                    layer.mlp.gate.expert_bias.copy_(torch.linspace(-5, 5, TINY.num_experts))

    plain = _loss_and_grads(build_tiny_model(TINY, seed=0), IDS, False, between=shift_bias)
    checkpointed = _loss_and_grads(build_tiny_model(TINY, seed=0), IDS, True, between=shift_bias)
    _assert_same(plain, checkpointed)


def test_no_grad_forward_ignores_checkpointing() -> None:
    model = build_tiny_model(TINY, seed=0)
    with torch.no_grad():
        a = model(IDS, checkpoint_layers=True).logits
        b = model(IDS).logits
    assert torch.equal(a, b)


# --- 2 FSDP2 ranks (gloo): a train step with chunking + checkpointing equals the plain one ----------

def _sections(**learner: object) -> LearnerSections:
    return learner_sections(parse_recipe({
        "model": {"tiny": "tiny", "mtp": {"enabled": True}}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp32", "lr": 1e-3, "micro_batch_tokens": 40, "num_ranks": 2, "device": "cpu",
                    "updates_per_batch": 2, **learner},
        "rollout": {"routing_replay": "r2", "temperature": 0.8, "top_p": 0.95},
        "algorithm": {"mismatch": {"type": "none"}},
    }))


def _train(rank: int, init: str, model_dir: str, out: str, learner: dict) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, 2, _sections(**learner), model_dir)
    worker.setup(init)
    metrics = [worker.train_step(random_batch(1024, seed=s)) for s in range(2)]
    if rank == 0:
        torch.save(metrics, out)
    leave(worker)


def _spawn(tmp: Path, tag: str, model_dir: Path, learner: dict) -> list[dict]:
    out = tmp / f"{tag}.pt"
    mp.spawn(_train, args=(f"file://{tmp}/pg-{tag}", str(model_dir), str(out), learner), nprocs=2)
    return torch.load(out)


def test_two_fsdp2_ranks_train_alike_with_chunks_and_checkpointing(tmp_path: Path, tiny_dir: Path) -> None:
    """Routing replay (r2, two updates per batch), MTP trained, top-p sampling settings: chunks of 7
    tokens (not dividing the micro-batches) with checkpointing give the loss, MTP loss, entropy and
    gradient norm of one chunk per micro-batch without checkpointing."""
    plain = _spawn(tmp_path, "plain", tiny_dir, {"logprob_chunk_tokens": 4096, "activation_checkpointing": False})
    chunked = _spawn(tmp_path, "chunked", tiny_dir, {"logprob_chunk_tokens": 7, "activation_checkpointing": True})
    for a, b in zip(plain, chunked, strict=True):
        for key in ("loss", "mtp_loss", "entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert 0.0 < a["entropy"] < 7.0  # nats; the tiny vocabulary has 1024 tokens (log 1024 = 6.9)
