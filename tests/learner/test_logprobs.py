"""The learner's behaviour-policy log-probs (temperature, top-k, top-p as vLLM samples), and what
the learner is given of the recipe."""

from __future__ import annotations

import inspect
import math
import typing
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import Recipe, parse_recipe
from ling_rl.learner.logprobs import processed_logits, token_logprobs
from ling_rl.driver.session import learner_sections
from ling_rl.learner.sections import LearnerSections
from tests.learner.helpers import leave, random_batch

LOGITS = torch.tensor([0.0, 1.0, 2.0, 3.0])  # softmax: 0.032, 0.087, 0.237, 0.644


def _all_tokens(logits: torch.Tensor, **sampling: float) -> torch.Tensor:
    return token_logprobs(logits.expand(4, 4), torch.arange(4), **sampling)


def test_temperature_1_top_p_1_top_k_off_is_the_plain_log_softmax() -> None:
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 50, (3, 7))
    expected = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(token_logprobs(logits, targets, temperature=1.0, top_p=1.0, top_k=-1), expected, atol=1e-6)


def test_greedy_temperature_is_the_plain_log_softmax_not_a_division_by_zero() -> None:
    # vLLM reports plain log-softmax for greedy requests (temperature < 1e-5), with no top-k/top-p.
    got = _all_tokens(LOGITS, temperature=0.0, top_p=0.5, top_k=1)
    assert torch.allclose(got, torch.log_softmax(LOGITS, -1), atol=1e-6)


def test_temperature_divides_the_logits() -> None:
    got = _all_tokens(LOGITS, temperature=0.5)
    assert torch.allclose(got, torch.log_softmax(LOGITS / 0.5, -1), atol=1e-6)


def test_top_k_and_top_p_match_hand_computed_cases() -> None:
    def kept(**sampling: float) -> list[bool]:
        return torch.isfinite(processed_logits(LOGITS, **{"temperature": 1.0, "top_p": 1.0, "top_k": -1, **sampling})).tolist()

    assert kept(top_k=2) == [False, False, True, True]
    # Ascending cumulative probabilities 0.032, 0.119, 0.356, 1.0: dropped while <= 1 - p.
    assert kept(top_p=0.7) == [False, False, True, True]
    assert kept(top_p=0.6) == [False, False, False, True]
    assert kept(top_p=0.95) == [False, True, True, True]
    assert kept(top_p=0.01) == [False, False, False, True]  # the most likely token always stays
    assert kept(top_k=3, top_p=0.7) == [False, False, True, True]  # top-p renormalises over top-k's set
    # Kept tokens renormalised over the kept set, after the temperature: 6 - log(e^4 + e^6).
    got = _all_tokens(LOGITS, temperature=0.5, top_k=2)
    assert got[3].item() == pytest.approx(6.0 - math.log(math.exp(4.0) + math.exp(6.0)), abs=1e-6)
    assert got[2].item() == pytest.approx(4.0 - math.log(math.exp(4.0) + math.exp(6.0)), abs=1e-6)
    assert _all_tokens(LOGITS, top_p=0.6)[3].item() == pytest.approx(0.0, abs=1e-6)


def test_an_excluded_target_gets_a_finite_logprob_and_gradient() -> None:
    logits = LOGITS.clone().expand(4, 4).contiguous().requires_grad_(True)
    logp = token_logprobs(logits, torch.arange(4), temperature=0.7, top_p=0.6)
    assert torch.isfinite(logp).all()
    # Tokens 0..2 are outside the nucleus: their stand-in is the tempered, untruncated log-prob.
    assert torch.allclose(logp[:3], torch.log_softmax(LOGITS / 0.7, -1)[:3], atol=1e-6)
    logp.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_matches_vllms_own_top_k_top_p() -> None:
    """Same masks as the installed vLLM's sampler code on random logits (catches a vLLM change)."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    logits = torch.randn(16, 1024, generator=torch.Generator().manual_seed(1)) * 3
    for temperature, top_p, top_k in ((0.7, 0.9, -1), (0.7, 1.0, 50), (1.3, 0.8, 200)):
        k = None if top_k < 0 else torch.full((16,), top_k)
        p = None if top_p >= 1 else torch.full((16,), top_p)
        theirs = apply_top_k_top_p_pytorch(logits.clone() / temperature, k, p).log_softmax(-1)
        ours = processed_logits(logits, temperature, top_p, top_k).log_softmax(-1)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        finite = torch.isfinite(ours)
        assert torch.allclose(ours[finite], theirs[finite], atol=1e-5)


def test_the_learner_is_given_sections_not_the_recipe() -> None:
    from ling_rl.learner.group import LearnerGroup
    from ling_rl.learner.worker import LearnerWorker

    for fn in (LearnerWorker.__init__, LearnerGroup.__init__):
        hints = typing.get_type_hints(fn)
        assert Recipe not in hints.values(), f"{fn.__qualname__} takes the whole Recipe"
        assert hints["sections"] is LearnerSections
        assert "recipe" not in inspect.signature(fn).parameters


# --- the worker applies the rollout's sampling settings in its RL passes -----------------------------

def _sections(**rollout: float) -> LearnerSections:
    return learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp32", "num_ranks": 1}, "rollout": rollout,
        "algorithm": {"mismatch": {"type": "none"}},
    }))


def _worker_logprobs(rank: int, init: str, model_dir: str, out: str) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(0, 1, _sections(temperature=0.7, top_p=0.9), model_dir)
    worker.setup(init)
    batch = random_batch(1024, seed=3)
    old, _ = worker.old_logprobs(batch, record_routing=False)
    with torch.no_grad():
        logits = worker.model(batch.input_ids).logits[:, :-1].float()
    torch.save({"old": old, "logits": logits, "ids": batch.input_ids, "mask": batch.response_mask}, out)
    leave(worker)


def test_worker_old_policy_pass_uses_the_rollout_sampling_settings(tmp_path: Path, tiny_dir: Path) -> None:
    mp.spawn(_worker_logprobs, args=(f"file://{tmp_path}/pg", str(tiny_dir), str(tmp_path / "r.pt")), nprocs=1)
    r = torch.load(tmp_path / "r.pt")
    mask, targets = r["mask"][:, 1:].bool(), r["ids"][:, 1:]
    old = r["old"][:, 1:][mask]
    processed = token_logprobs(r["logits"], targets, temperature=0.7, top_p=0.9)[mask]
    raw = token_logprobs(r["logits"], targets)[mask]
    assert torch.allclose(old, processed, atol=1e-5)
    assert (old - raw).abs().max() > 0.1
