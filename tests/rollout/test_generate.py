"""Sampling through the two-engine group: shapes, log-probs, finish reasons, seeds, request order."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from ling_rl.models.hf_io import load_model
from ling_rl.rollout.engine import GenerationRequest, check_seed_ranges
from ling_rl.rollout.group import split_contiguous
from tests.rollout.helpers import max_logprob_gap, prompts

pytestmark = pytest.mark.vllm


def test_n_samples_with_per_token_logprobs_and_length_finish(group, tiny_dir: Path) -> None:
    ps = prompts(3, seed=1)
    reqs = [GenerationRequest(prompt_ids=p, n=3, seed=100 * i, max_tokens=6) for i, p in enumerate(ps)]
    out = group.generate(reqs, temperature=1.0, top_p=1.0, top_k=-1)
    assert [len(gens) for gens in out] == [3, 3, 3]
    for gens in out:
        for g in gens:
            # The random tiny model emits EOS with p ~ 1e-3 per token: 6 tokens end by length.
            assert g.finish_reason == "length"
            assert len(g.token_ids) == len(g.logprobs) == 6
            assert all(math.isfinite(lp) and lp <= 0 for lp in g.logprobs)
            assert isinstance(g.text, str)
        assert len({tuple(g.token_ids) for g in gens}) == 3, "the n samples of a prompt should differ"
    # At temperature 1, top-p 1 the sampling distribution is the model's own.
    assert max_logprob_gap(load_model(tiny_dir), ps, out) < 1e-3


@pytest.mark.parametrize("sampling", [dict(temperature=0.7, top_p=1.0, top_k=-1),
                                      dict(temperature=0.7, top_p=0.9, top_k=-1),
                                      dict(temperature=1.0, top_p=0.8, top_k=20)])
def test_logprobs_are_the_sampling_distributions_and_the_learner_computes_the_same(group, tiny_dir: Path,
                                                                                   sampling: dict) -> None:
    """The engine reports the log-probs of the processed distribution it sampled from (temperature,
    top-k, top-p), and the learner's transform of the project model's logits gives the same."""
    ps = prompts(3, seed=2)
    reqs = [GenerationRequest(prompt_ids=p, n=2, seed=10 * i, max_tokens=8) for i, p in enumerate(ps)]
    out = group.generate(reqs, **sampling)
    model = load_model(tiny_dir)
    gap = max_logprob_gap(model, ps, out, **sampling)
    print(f"{sampling}: max |engine - learner| log-prob = {gap:.2e}")
    assert gap < 1e-5
    # Not the raw model's: the check above would fail with raw log-probs on either side.
    assert max_logprob_gap(model, ps, out) > 1e-2


def test_greedy_generation_reports_the_models_logprobs(group, tiny_dir: Path) -> None:
    """Temperature 0 (greedy evaluation): vLLM applies no temperature or truncation, and neither
    does the learner's transform (no division by zero)."""
    ps = prompts(2, seed=4)
    out = group.generate([GenerationRequest(prompt_ids=p, n=1, seed=10 * i, max_tokens=6) for i, p in enumerate(ps)],
                         temperature=0.0, top_p=0.9, top_k=20)
    model = load_model(tiny_dir)
    assert max_logprob_gap(model, ps, out, temperature=0.0, top_p=0.9, top_k=20) < 1e-5
    assert max_logprob_gap(model, ps, out) < 1e-5


def test_same_seeds_same_tokens_different_seeds_differ(group) -> None:
    ps = prompts(4, seed=3)
    reqs = [GenerationRequest(prompt_ids=p, n=2, seed=1000 + 10 * i, max_tokens=8) for i, p in enumerate(ps)]
    first = group.generate(reqs, 1.0, 1.0, -1)
    again = group.generate(reqs, 1.0, 1.0, -1)
    assert [[g.token_ids for g in gens] for gens in first] == [[g.token_ids for g in gens] for gens in again]
    flat = [lp for gens in first for g in gens for lp in g.logprobs]
    assert flat == pytest.approx([lp for gens in again for g in gens for lp in g.logprobs], abs=1e-5)
    other = [GenerationRequest(prompt_ids=r.prompt_ids, n=2, seed=r.seed + 5, max_tokens=8) for r in reqs]
    changed = group.generate(other, 1.0, 1.0, -1)
    for a, b in zip(first, changed):
        assert [g.token_ids for g in a] != [g.token_ids for g in b]


def test_overlapping_seed_ranges_are_rejected(group) -> None:
    # vLLM seeds request i's samples with seed..seed+n-1: seeds 0 and 1 with n=2 would share seed 1.
    reqs = [GenerationRequest([11, 12], n=2, seed=0, max_tokens=2), GenerationRequest([13, 14], n=2, seed=1, max_tokens=2)]
    with pytest.raises(ValueError, match="requests 0 and 1 overlap in seeds"):
        group.generate(reqs, 1.0, 1.0, -1)
    check_seed_ranges([GenerationRequest([1], n=2, seed=0, max_tokens=1), GenerationRequest([1], n=2, seed=2, max_tokens=1)])


def test_split_is_contiguous_and_balanced() -> None:
    assert split_contiguous(5, 2) == [(0, 3), (3, 5)]
    assert split_contiguous(1, 2) == [(0, 1), (1, 1)]
    assert split_contiguous(6, 3) == [(0, 2), (2, 4), (4, 6)]


def test_two_engines_return_results_in_request_order(group, tiny_dir: Path) -> None:
    assert len(group.engines) == 2
    # Distinct n and max_tokens per request make any mix-up of the reassembly visible, and the
    # log-prob check ties each result to its own prompt. 5 requests: 3 on engine 0, 2 on engine 1.
    ps = prompts(5, seed=4)
    reqs = [GenerationRequest(prompt_ids=p, n=i + 1, seed=10_000 + 10 * i, max_tokens=3 + i) for i, p in enumerate(ps)]
    out = group.generate(reqs, 1.0, 1.0, -1)
    assert [len(gens) for gens in out] == [1, 2, 3, 4, 5]
    for i, gens in enumerate(out):
        assert all(len(g.token_ids) == 3 + i for g in gens)
    assert max_logprob_gap(load_model(tiny_dir), ps, out) < 1e-3
    big = [GenerationRequest(prompt_ids=p, n=8, seed=50_000 + 10 * i, max_tokens=32) for i, p in enumerate(prompts(8, seed=8))]
    started = time.perf_counter()
    group.generate(big, 1.0, 1.0, -1)
    print(f"generate: 8 prompts x 8 samples x 32 tokens on 2 engines in {time.perf_counter() - started:.2f} s")
    # The engine a request lands on does not change its samples: a seed is reproducible alone.
    alone = group.generate([reqs[4]], 1.0, 1.0, -1)  # engine 0 now; engine 1 above
    assert [g.token_ids for g in alone[0]] == [g.token_ids for g in out[4]]
