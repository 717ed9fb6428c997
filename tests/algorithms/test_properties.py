"""Property tests: invariance to padding and to the order of groups, segmentation independent of
batching, finite gradients for extreme ratios."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ling_rl.algorithms import AlgorithmConfig, SegmentationConfig, Segmenter, compute_advantages, policy_loss
from ling_rl.algorithms.config import AdvantageConfig, LossConfig, MismatchConfig

SETTINGS = settings(max_examples=25, deadline=None)
LOSS_TYPES = st.sampled_from(["ppo_token", "lpo", "gspo"])
MISMATCH = st.sampled_from(["icepop", "tis", "none"])
AGG = st.sampled_from(["token_mean", "seq_mean"])


def make_batch(seed: int, groups: int, group_size: int, length: int):
    gen = torch.Generator().manual_seed(seed)
    batch = groups * group_size
    old = -3 * torch.rand(batch, length, generator=gen, dtype=torch.float64)
    logp = old + 0.2 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    inf = old + 0.5 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    rewards = torch.rand(groups, group_size, generator=gen, dtype=torch.float64)
    adv = compute_advantages(rewards, None, AdvantageConfig()).advantages.reshape(-1)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    # Non-decreasing unit ids from random cut points, like the segmenter's.
    units = torch.cumsum((torch.rand(batch, length, generator=gen) < 0.3).long(), dim=1)
    units[:, 0] = 0
    units = torch.cummax(units, dim=1).values
    return logp, old, inf, adv, mask, units


def cfg_for(loss_type: str, mismatch: str, agg: str) -> AlgorithmConfig:
    return AlgorithmConfig(
        loss=LossConfig(type=loss_type, eps_low=0.1, eps_high=0.15, dual_clip=2.0, loss_agg=agg),
        mismatch=MismatchConfig(type=mismatch, beta=3.0),
    )


def loss_grad(cfg, logp, old, inf, adv, mask, units):
    logp = logp.detach().clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, units, mask, cfg, inf_logp=inf)
    loss.backward()
    return loss.detach(), logp.grad


@SETTINGS
@given(seed=st.integers(0, 10**6), loss_type=LOSS_TYPES, mismatch=MISMATCH, agg=AGG,
       left=st.integers(0, 4), right=st.integers(0, 4))
def test_loss_is_invariant_to_padding(seed, loss_type, mismatch, agg, left, right) -> None:
    logp, old, inf, adv, mask, units = make_batch(seed, groups=2, group_size=3, length=7)
    cfg = cfg_for(loss_type, mismatch, agg)
    base_loss, base_grad = loss_grad(cfg, logp, old, inf, adv, mask, units)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        filler_l = torch.full((t.shape[0], left), value, dtype=t.dtype)
        filler_r = torch.full((t.shape[0], right), value, dtype=t.dtype)
        return torch.cat([filler_l, t, filler_r], dim=1)

    # Garbage in the padding (NaN log-probs, wild unit ids) must not leak into loss or gradient.
    padded = (pad(logp, float("nan")), pad(old, float("-inf")), pad(inf, 5.0), adv, pad(mask, False), pad(units, -7))
    loss, grad = loss_grad(cfg, *padded)
    torch.testing.assert_close(loss, base_loss)
    torch.testing.assert_close(grad[:, left : left + logp.shape[1]], base_grad)
    assert torch.all(grad[:, :left] == 0) and torch.all(grad[:, left + logp.shape[1] :] == 0)


@SETTINGS
@given(seed=st.integers(0, 10**6), loss_type=LOSS_TYPES, mismatch=MISMATCH, agg=AGG, perm_seed=st.integers(0, 100))
def test_loss_is_invariant_to_the_order_of_groups(seed, loss_type, mismatch, agg, perm_seed) -> None:
    groups, size = 4, 2
    batch = make_batch(seed, groups=groups, group_size=size, length=6)
    cfg = cfg_for(loss_type, mismatch, agg)
    base_loss, base_grad = loss_grad(cfg, *batch)
    group_order = torch.randperm(groups, generator=torch.Generator().manual_seed(perm_seed))
    rows = (group_order.unsqueeze(1) * size + torch.arange(size)).reshape(-1)
    loss, grad = loss_grad(cfg, *(t[rows] for t in batch))
    torch.testing.assert_close(loss, base_loss)
    torch.testing.assert_close(grad, base_grad[rows])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), loss_type=LOSS_TYPES, mismatch=MISMATCH, dual=st.booleans(),
       scale=st.sampled_from([1.0, 30.0, 1e3, 1e6]))
def test_gradients_are_finite_for_extreme_ratios(seed, loss_type, mismatch, dual, scale) -> None:
    logp, old, inf, adv, mask, units = make_batch(seed, groups=2, group_size=2, length=8)
    gen = torch.Generator().manual_seed(seed)
    logp = old + scale * torch.randn(logp.shape, generator=gen, dtype=torch.float64)
    inf = old + scale * torch.randn(logp.shape, generator=gen, dtype=torch.float64)
    adv = adv * scale
    cfg = AlgorithmConfig(
        loss=LossConfig(type=loss_type, dual_clip=3.0 if dual else None),
        mismatch=MismatchConfig(type=mismatch, c=float("inf") if mismatch == "tis" else 2.0),
    )
    loss, grad = loss_grad(cfg, logp, old, inf, adv, mask, units)
    assert torch.isfinite(loss) and torch.all(torch.isfinite(grad))
    logp32 = logp.float().detach().requires_grad_(True)
    loss32, _ = policy_loss(logp32, old.float(), adv.float(), units, mask, cfg, inf_logp=inf.float())
    loss32.backward()
    assert torch.isfinite(loss32) and torch.all(torch.isfinite(logp32.grad))


TEXT = st.lists(
    st.sampled_from(list("ab 12.,;:!?\n$`\\()[]") + ["。", "，", "、", "你", "🙂", "```", "the", " word"]),
    max_size=40,
).map("".join)


@pytest.fixture(scope="module")
def bpe_segmenter(byte_bpe):
    from ling_rl.algorithms import token_bytes_from_tokenizer

    return Segmenter(token_bytes_from_tokenizer(byte_bpe), SegmentationConfig())


@SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=6), offsets=st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_segmentation_does_not_depend_on_batching(byte_bpe, bpe_segmenter, texts, offsets) -> None:
    rows = [byte_bpe.encode(t).ids for t in texts]
    single = [bpe_segmenter.segment(r) for r in rows]
    assert bpe_segmenter.segment_batch(rows) == single
    assert bpe_segmenter.segment_batch(rows[::-1]) == single[::-1]
    length = max(len(r) for r in rows) + 3
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, (row, offset) in enumerate(zip(rows, offsets)):
        ids[b, offset : offset + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, offset : offset + len(row)] = True
    padded = bpe_segmenter.segment_padded(ids, mask)
    for b, units in enumerate(single):
        assert padded[b, mask[b]].tolist() == units
        assert all(0 <= u < len(units) for u in units)
