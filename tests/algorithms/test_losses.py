"""Golden values (worked out by hand below) and limit identities of the policy losses."""

from __future__ import annotations

import math

import pytest
import torch

from ling_rl.algorithms import AlgorithmConfig, policy_loss
from ling_rl.algorithms.losses import aggregation_count
from ling_rl.algorithms.config import KLConfig, LossConfig, MismatchConfig


@pytest.fixture(autouse=True)
def float64_default():
    """Hand-computed goldens are compared in double precision; restored for other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def algo(loss_type: str, **loss: object) -> AlgorithmConfig:
    return AlgorithmConfig(loss=LossConfig(type=loss_type, **loss), mismatch=MismatchConfig(type="none"))


def run(cfg: AlgorithmConfig, log_ratio, adv, mask, unit_ids=None, **kw):
    """Loss and d loss / d logp for logp = old_logp + log_ratio, old_logp a fixed offset."""
    old = torch.full_like(torch.as_tensor(log_ratio, dtype=torch.float64), -1.5)
    logp = (old + torch.as_tensor(log_ratio, dtype=torch.float64)).detach().requires_grad_(True)
    loss, metrics = policy_loss(logp, old, torch.as_tensor(adv, dtype=torch.float64), unit_ids, mask, cfg, **kw)
    loss.backward()
    return loss.item(), logp.grad, metrics


# --- ppo_token ---------------------------------------------------------------------------------

L = math.log
MASK_3_2 = torch.tensor([[True, True, True], [True, True, False]])


def test_ppo_token_golden_loss_and_gradient() -> None:
    # Row 0, A = +1, ratios 1.1, 0.95, 1.5: objective 1.1, 0.95, clip -> 1.2 (no gradient).
    # Row 1, A = -1, ratios 0.7, 1.3: min(-0.7, -0.8) = -0.8 (clipped, no gradient), -1.3.
    # token_mean over 5 tokens: loss = -(1.1 + 0.95 + 1.2 - 0.8 - 1.3) / 5 = -0.23.
    # d loss/d logp_t = -A_t r_t / 5 on unclipped tokens.
    log_ratio = [[L(1.1), L(0.95), L(1.5)], [L(0.7), L(1.3), 0.0]]
    loss, grad, m = run(algo("ppo_token", eps_low=0.2, eps_high=0.2), log_ratio, [1.0, -1.0], MASK_3_2)
    assert loss == pytest.approx(-0.23)
    expected = torch.tensor([[-1.1 / 5, -0.95 / 5, 0.0], [0.0, 1.3 / 5, 0.0]])
    torch.testing.assert_close(grad, expected)
    assert m.policy.clip_frac_token.item() == pytest.approx(2 / 5)
    assert m.policy.clip_frac_unit.item() == pytest.approx(2 / 5)
    assert m.policy.units_per_response.item() == pytest.approx(2.5)
    assert m.policy.mean_unit_len.item() == pytest.approx(1.0)
    assert m.policy.ratio_max.item() == pytest.approx(1.5)
    assert m.policy.ratio_min.item() == pytest.approx(0.7)


def test_ppo_token_dual_clip_golden() -> None:
    # As above with dual-clip c = 1.25: row 1's r = 1.3 > c gives max(-1.3, -1.25) = -1.25, no gradient.
    log_ratio = [[L(1.1), L(0.95), L(1.5)], [L(0.7), L(1.3), 0.0]]
    cfg = algo("ppo_token", eps_low=0.2, eps_high=0.2, dual_clip=1.25)
    loss, grad, m = run(cfg, log_ratio, [1.0, -1.0], MASK_3_2)
    assert loss == pytest.approx(-(1.1 + 0.95 + 1.2 - 0.8 - 1.25) / 5)
    torch.testing.assert_close(grad, torch.tensor([[-1.1 / 5, -0.95 / 5, 0.0], [0.0, 0.0, 0.0]]))
    assert m.policy.dual_clip_frac_token.item() == pytest.approx(1 / 5)


def test_ppo_token_clip_higher_is_asymmetric() -> None:
    # eps_low 0.2, eps_high 0.28: r = 1.25 is inside for A > 0; r = 0.75 is clipped for A < 0.
    loss, grad, _ = run(algo("ppo_token", eps_low=0.2, eps_high=0.28), [[L(1.25)], [L(0.75)]], [1.0, -1.0],
                        torch.ones(2, 1, dtype=torch.bool))
    assert loss == pytest.approx(-(1.25 - 0.8) / 2)
    torch.testing.assert_close(grad, torch.tensor([[-1.25 / 2], [0.0]]))


def test_ppo_token_type_defaults_are_dapo() -> None:
    assert LossConfig(type="ppo_token").clip_range() == (0.2, 0.28)
    assert LossConfig(type="lpo").clip_range() == (0.03, 0.03)
    assert LossConfig(type="gspo").clip_range() == (3e-4, 4e-4)
    assert LossConfig(type="gspo", eps_low=0.1).clip_range() == (0.1, 4e-4)


# --- lpo ---------------------------------------------------------------------------------------


def test_lpo_golden_loss_and_gradient() -> None:
    # Units {0,1} and {2,3,4}, A = 2, eps 0.03.
    # Unit 0: mean log ratio (0.1 - 0.04)/2 = 0.03, r0 = e^0.03 = 1.03045 > 1.03: clipped, 2 * 1.03 * 2.
    # Unit 1: mean (0.02 - 0.01 - 0.04)/3 = -0.01, r1 = e^-0.01, 3 * r1 * 2.
    # loss = -(2 * 2.06 + 3 * 2 r1) / 5; unit 1 tokens: d/d logp_t = -(3 * 2 r1 / 5) / 3 = -2 r1 / 5.
    r1 = math.exp(-0.01)
    mask = torch.ones(1, 5, dtype=torch.bool)
    units = torch.tensor([[0, 0, 1, 1, 1]])
    loss, grad, m = run(algo("lpo"), [[0.1, -0.04, 0.02, -0.01, -0.04]], [2.0], mask, units)
    assert loss == pytest.approx(-(2 * 2.06 + 3 * 2 * r1) / 5)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -2 * r1 / 5, -2 * r1 / 5, -2 * r1 / 5]]))
    assert m.policy.clip_frac_unit.item() == pytest.approx(1 / 2)
    assert m.policy.clip_frac_token.item() == pytest.approx(2 / 5)
    assert m.policy.units_per_response.item() == pytest.approx(2.0)
    assert m.policy.mean_unit_len.item() == pytest.approx(2.5)
    assert m.policy.ratio_min.item() == pytest.approx(r1)
    assert m.policy.ratio_max.item() == pytest.approx(math.exp(0.03))


def test_lpo_seq_mean_golden() -> None:
    # Row 0: one unit of 2 tokens, mean log ratio 0.01, A = 1: response mean = e^0.01.
    # Row 1: units {0}, {1,2}: log ratios 0.0 | 0.02, 0.0 (mean 0.01), A = -1:
    #   (1 * -1 + 2 * -e^0.01) / 3. seq_mean: average of the two response means.
    mask = torch.tensor([[True, True, False], [True, True, True]])
    units = torch.tensor([[0, 0, -1], [0, 1, 1]])
    cfg = algo("lpo", loss_agg="seq_mean", eps_low=0.1, eps_high=0.1)
    loss, _, _ = run(cfg, [[0.0, 0.02, 0.0], [0.0, 0.02, 0.0]], [1.0, -1.0], mask, units)
    e = math.exp(0.01)
    assert loss == pytest.approx(-(e + (-1 - 2 * e) / 3) / 2)


def test_lpo_needs_unit_ids() -> None:
    with pytest.raises(ValueError, match="unit_ids"):
        run(algo("lpo"), [[0.0, 0.0]], [1.0], torch.ones(1, 2, dtype=torch.bool))


def test_unit_ids_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, T=2\)"):
        run(algo("lpo"), [[0.0, 0.0]], [1.0], torch.ones(1, 2, dtype=torch.bool), torch.tensor([[0, 2]]))


# --- gspo --------------------------------------------------------------------------------------


def test_gspo_golden_token_mean_and_seq_mean() -> None:
    # Row 0 (2 tokens): mean log ratio 0.00025, inside [1 - 3e-4, 1 + 4e-4]; A = 1.
    # Row 1 (3 tokens): mean 0.001, r > 1.0004: clipped to 1.0004; A = 1.
    mask = torch.tensor([[True, True, False], [True, True, True]])
    log_ratio = [[0.001, -0.0005, 0.3], [0.002, 0.0, 0.001]]
    r0 = math.exp(0.00025)
    loss, grad, m = run(algo("gspo", loss_agg="token_mean"), log_ratio, [1.0, 1.0], mask)
    assert loss == pytest.approx(-(2 * r0 + 3 * 1.0004) / 5)
    # Row 0's ratio is the mean of 2 log ratios, carried by 2 tokens: d/d logp_t = -(2 r0 / 5) / 2.
    torch.testing.assert_close(grad, torch.tensor([[-r0 / 5, -r0 / 5, 0.0], [0.0, 0.0, 0.0]]))
    assert m.policy.units_per_response.item() == pytest.approx(1.0)
    assert m.policy.clip_frac_unit.item() == pytest.approx(0.5)
    loss_seq, _, _ = run(algo("gspo", loss_agg="seq_mean"), log_ratio, [1.0, 1.0], mask)
    assert loss_seq == pytest.approx(-(r0 + 1.0004) / 2)
    # Unset, gspo aggregates per sequence as in the GSPO paper.
    loss_default, _, _ = run(algo("gspo"), log_ratio, [1.0, 1.0], mask)
    assert loss_default == pytest.approx(loss_seq)


@pytest.mark.parametrize(("loss_type", "loss_agg", "expected"), [
    ("gspo", None, "seq_mean"), ("gspo", "token_mean", "token_mean"), ("lpo", None, "token_mean"),
    ("ppo_token", None, "token_mean"), ("lpo", "seq_mean", "seq_mean"),
])
def test_loss_agg_unset_takes_the_loss_types_default(loss_type: str, loss_agg: str | None, expected: str) -> None:
    cfg = LossConfig(type=loss_type, loss_agg=loss_agg)
    assert cfg.aggregation() == expected
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    # The step-wide denominator the learner passes: response tokens, or non-empty responses.
    assert aggregation_count(mask, cfg) == {"token_mean": 3, "seq_mean": 2}[expected]


# --- limits ------------------------------------------------------------------------------------


def random_batch(seed: int, batch: int = 4, length: int = 9):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen) * 3
    logp = old + 0.3 * torch.randn(batch, length, generator=gen)
    inf = old + 0.8 * torch.randn(batch, length, generator=gen)
    adv = torch.randn(batch, generator=gen)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    return logp, old, inf, adv, mask


def loss_and_grad(cfg, logp, old, adv, unit_ids, mask, **kw):
    logp = logp.detach().clone().requires_grad_(True)
    loss, metrics = policy_loss(logp, old, adv, unit_ids, mask, cfg, **kw)
    loss.backward()
    return loss, logp.grad, metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean"])
def test_lpo_with_one_token_per_unit_equals_ppo_token(seed: int, loss_agg: str) -> None:
    logp, old, inf, adv, mask = random_batch(seed)
    clip = dict(eps_low=0.1, eps_high=0.15, dual_clip=1.3, loss_agg=loss_agg)
    mismatch = MismatchConfig(type="icepop", alpha=0.5, beta=2.0)
    ppo = AlgorithmConfig(loss=LossConfig(type="ppo_token", **clip), mismatch=mismatch)
    lpo = AlgorithmConfig(loss=LossConfig(type="lpo", **clip), mismatch=mismatch)
    token_units = torch.arange(logp.shape[1]).expand_as(logp)
    a = loss_and_grad(ppo, logp, old, adv, None, mask, inf_logp=inf)
    b = loss_and_grad(lpo, logp, old, adv, token_units, mask, inf_logp=inf)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert a[1].abs().sum() > 0
    for name in ("clip_frac_unit", "clip_frac_token", "units_per_response", "mean_unit_len", "ratio_mean"):
        torch.testing.assert_close(getattr(a[2].policy, name), getattr(b[2].policy, name))


@pytest.mark.parametrize("seed", range(5))
def test_lpo_with_one_unit_per_response_equals_gspo(seed: int) -> None:
    logp, old, inf, adv, mask = random_batch(seed)
    clip = dict(eps_low=0.05, eps_high=0.08)
    # ALGORITHMS.md: "with one unit per response it equals GSPO with token-length weighting".
    gspo = AlgorithmConfig(loss=LossConfig(type="gspo", loss_agg="token_mean", **clip), mismatch=MismatchConfig(type="tis"))
    lpo = AlgorithmConfig(loss=LossConfig(type="lpo", **clip), mismatch=MismatchConfig(type="tis"))
    a = loss_and_grad(gspo, logp, old, adv, None, mask, inf_logp=inf)
    b = loss_and_grad(lpo, logp, old, adv, torch.zeros_like(mask, dtype=torch.long), mask, inf_logp=inf)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_lpo_unclipped_unit_gradient_matches_the_tokenwise_identity() -> None:
    # ALGORITHMS.md 2: inside an unclipped unit the gradient is that of token-level PPO with each
    # token's ratio replaced by sg(r_u) * exp(logp_t - sg(logp_t)).
    logp, old, _, adv, mask = random_batch(3, batch=2, length=6)
    mask[:] = True
    units = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    cfg = AlgorithmConfig(loss=LossConfig(type="lpo", eps_low=0.99, eps_high=100.0), mismatch=MismatchConfig(type="none"))
    _, grad, _ = loss_and_grad(cfg, logp, old, adv, units, mask)

    x = logp.detach().clone().requires_grad_(True)
    log_ratio = (x - old).detach()
    unit_ratio = torch.stack(
        [torch.stack([log_ratio[b][units[b] == units[b, t]].mean() for t in range(6)]) for b in range(2)]
    ).exp()
    surrogate = unit_ratio * torch.exp(x - x.detach()) * adv.unsqueeze(1)
    (-surrogate.sum() / mask.sum()).backward()
    torch.testing.assert_close(grad, x.grad)


@pytest.mark.parametrize("loss_type", ["ppo_token", "lpo", "gspo"])
def test_gradient_is_zero_exactly_on_clipped_units(loss_type: str) -> None:
    gen = torch.Generator().manual_seed(11)
    batch, length = 16, 8
    old = -torch.rand(batch, length, generator=gen)
    # A per-row offset so that whole-response (gspo) ratios also fall on both sides of the clips.
    logp = old + 0.25 * torch.randn(batch, length, generator=gen) + 0.3 * torch.randn(batch, 1, generator=gen)
    adv = torch.where(torch.rand(batch, generator=gen) < 0.5, -1.0, 1.0) * (0.5 + torch.rand(batch, generator=gen))
    mask = torch.ones(batch, length, dtype=torch.bool)
    units = {
        "ppo_token": torch.arange(length).expand(batch, length),
        "lpo": torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]).expand(batch, length),
        "gspo": torch.zeros(batch, length, dtype=torch.long),
    }[loss_type]
    eps_low, eps_high, dual = 0.1, 0.12, 1.2
    cfg = AlgorithmConfig(
        loss=LossConfig(type=loss_type, eps_low=eps_low, eps_high=eps_high, dual_clip=dual),
        mismatch=MismatchConfig(type="none"),
    )
    _, grad, _ = loss_and_grad(cfg, logp, old, adv, units, mask)

    log_ratio = logp - old
    unit_mean = torch.stack(
        [torch.stack([log_ratio[b][units[b] == units[b, t]].mean() for t in range(length)]) for b in range(batch)]
    )
    r = unit_mean.exp()
    a = adv.unsqueeze(1).expand_as(r)
    clipped = ((a > 0) & (r > 1 + eps_high)) | ((a < 0) & (r < 1 - eps_low)) | ((a < 0) & (r > dual))
    assert clipped.any() and (~clipped).any()
    assert torch.all(grad[clipped] == 0)
    assert torch.all(grad[~clipped] != 0)


# --- mismatch correction -----------------------------------------------------------------------

K = [1.0, 2.0, 10.0, 0.25]  # icepop [0.5, 5]: weights 1, 2, 0 (above beta), 0 (below alpha)


def mismatch_run(loss_type: str, mismatch: MismatchConfig, log_ratio: list[float], units=None):
    old = torch.full((1, 4), -2.0)
    inf = old - torch.tensor([[math.log(k) for k in K]])
    cfg = AlgorithmConfig(loss=LossConfig(type=loss_type, eps_low=0.2, eps_high=0.2), mismatch=mismatch)
    return loss_and_grad(cfg, old + torch.tensor([log_ratio]), old, torch.tensor([1.0]), units,
                         torch.ones(1, 4, dtype=torch.bool), inf_logp=inf)


def test_icepop_ppo_token_golden() -> None:
    ratios = [1.05, 0.9, 1.1, 1.0]
    loss, grad, m = mismatch_run("ppo_token", MismatchConfig(type="icepop"), [math.log(x) for x in ratios])
    assert loss.item() == pytest.approx(-(1 * 1.05 + 2 * 0.9) / 4)
    torch.testing.assert_close(grad, torch.tensor([[-1.05 / 4, -2 * 0.9 / 4, 0.0, 0.0]]))
    assert m.mismatch is not None
    assert m.mismatch.masked_frac.item() == pytest.approx(0.5)
    assert m.mismatch.mean_abs_log_k.item() == pytest.approx((0 + L(2) + L(10) + L(4)) / 4)
    assert m.mismatch.max_abs_log_k.item() == pytest.approx(L(10))


def test_icepop_lpo_masked_tokens_leave_the_ratio_mean_but_not_the_normalizer() -> None:
    # One unit; tokens 2 and 3 are masked, so r = exp((0.01 + 0.02) / 2) = e^0.015.
    # loss = -(1 * r + 2 * r) / 4: the normalizer still counts all 4 tokens.
    # d/d logp_t for t in {0, 1}: -(3 r / 4) / 2; masked tokens: 0.
    r = math.exp(0.015)
    loss, grad, _ = mismatch_run("lpo", MismatchConfig(type="icepop"), [0.01, 0.02, 0.5, -0.7],
                                 torch.zeros(1, 4, dtype=torch.long))
    assert loss.item() == pytest.approx(-3 * r / 4)
    torch.testing.assert_close(grad, torch.tensor([[-3 * r / 8, -3 * r / 8, 0.0, 0.0]]))


def test_tis_golden() -> None:
    ratios = [1.05, 0.9, 1.1, 1.0]
    loss, _, m = mismatch_run("ppo_token", MismatchConfig(type="tis", c=2.0), [math.log(x) for x in ratios])
    assert loss.item() == pytest.approx(-(1 * 1.05 + 2 * 0.9 + 2 * 1.1 + 0.25 * 1.0) / 4)
    assert m.mismatch is not None and m.mismatch.masked_frac.item() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_icepop_with_an_infinite_band_masks_nothing(seed: int) -> None:
    # With [0, inf] every token keeps M(k) = k: no token is masked, which is importance weighting
    # without truncation (tis with c = inf); when pi_inf = pi_old it is no correction at all.
    logp, old, inf, adv, mask = random_batch(seed)
    units = torch.randint(0, 3, logp.shape, generator=torch.Generator().manual_seed(seed))
    loss_cfg = LossConfig(type="lpo", eps_low=0.1, eps_high=0.1)
    wide = AlgorithmConfig(loss=loss_cfg, mismatch=MismatchConfig(type="icepop", alpha=0.0, beta=math.inf))
    tis = AlgorithmConfig(loss=loss_cfg, mismatch=MismatchConfig(type="tis", c=math.inf))
    none = AlgorithmConfig(loss=loss_cfg, mismatch=MismatchConfig(type="none"))
    a = loss_and_grad(wide, logp, old, adv, units, mask, inf_logp=inf)
    b = loss_and_grad(tis, logp, old, adv, units, mask, inf_logp=inf)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert a[2].mismatch is not None and a[2].mismatch.masked_frac.item() == 0.0
    c = loss_and_grad(wide, logp, old, adv, units, mask, inf_logp=old)
    d = loss_and_grad(none, logp, old, adv, units, mask)
    torch.testing.assert_close(c[0], d[0])
    torch.testing.assert_close(c[1], d[1])


def test_icepop_without_inference_logprobs_is_refused() -> None:
    cfg = AlgorithmConfig(loss=LossConfig(type="ppo_token"))
    with pytest.raises(ValueError, match="inf_logp"):
        policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), None, torch.ones(1, 2, dtype=torch.bool), cfg)


# --- KL ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "per_token", "derivative"),
    [
        ("k1", lambda x: x, lambda x: 1.0),
        ("k2", lambda x: 0.5 * x * x, lambda x: x),
        ("k3", lambda x: math.exp(-x) - 1 + x, lambda x: 1 - math.exp(-x)),
    ],
)
def test_kl_golden(estimator, per_token, derivative) -> None:
    # pi_theta = pi_old and A = 0: the policy term is 0 and the loss is coef * mean KL.
    # log pi_theta - log pi_ref = 0.5 and -1.0.
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, float("nan")]])
    mask = torch.tensor([[True, True, False]])
    cfg = AlgorithmConfig(
        loss=LossConfig(type="ppo_token"), mismatch=MismatchConfig(type="none"), kl=KLConfig(estimator=estimator, coef=0.1)
    )
    loss, grad, m = loss_and_grad(cfg, logp, logp, torch.zeros(1), None, mask, ref_logp=ref)
    kl = (per_token(0.5) + per_token(-1.0)) / 2
    assert loss.item() == pytest.approx(0.1 * kl)
    assert m.kl is not None and m.kl.item() == pytest.approx(kl)
    torch.testing.assert_close(grad, torch.tensor([[0.1 * derivative(0.5) / 2, 0.1 * derivative(-1.0) / 2, 0.0]]))


def test_kl_coef_zero_needs_no_reference_and_positive_coef_does() -> None:
    mask = torch.ones(1, 2, dtype=torch.bool)
    off = AlgorithmConfig(loss=LossConfig(type="ppo_token"), mismatch=MismatchConfig(type="none"))
    assert not off.kl.needs_reference
    loss, metrics = policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), None, mask, off)
    assert metrics.kl is None
    on = off.model_copy(update={"kl": KLConfig(coef=0.5)})
    assert on.kl.needs_reference
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), None, mask, on)


# --- input checks and aggregation --------------------------------------------------------------


def test_shape_mismatches_name_the_tensor() -> None:
    cfg = algo("ppo_token")
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="old_logp"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2), None, mask, cfg)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), None, mask, cfg)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        policy_loss(torch.zeros(6), torch.zeros(6), torch.ones(1), None, torch.ones(6, dtype=torch.bool), cfg)


def test_denominator_spreads_the_token_mean_over_micro_batches() -> None:
    logp, old, _, adv, mask = random_batch(0, batch=6)
    cfg = algo("lpo", eps_low=0.1, eps_high=0.1)
    units = torch.arange(logp.shape[1]).expand_as(logp) // 3
    full, _ = policy_loss(logp, old, adv, units, mask, cfg)
    total = int(mask.sum())
    parts = [policy_loss(logp[s], old[s], adv[s], units[s], mask[s], cfg, denominator=total)[0]
             for s in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(parts[0] + parts[1], full)


def test_empty_batch_gives_zero_loss_with_a_gradient_path() -> None:
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = policy_loss(logp, logp.detach(), torch.ones(2), None, torch.zeros(2, 3, dtype=torch.bool), algo("gspo"))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logp.grad == 0)


def test_metrics_as_dict_is_flat_floats() -> None:
    logp, old, inf, adv, mask = random_batch(1)
    cfg = AlgorithmConfig(loss=LossConfig(type="ppo_token"))
    _, metrics = policy_loss(logp, old, adv, None, mask, cfg, inf_logp=inf, ref_logp=old)
    flat = metrics.as_dict()
    assert {"loss", "pg_loss", "kl", "policy/clip_frac_unit", "mismatch/masked_frac"} <= set(flat)
    assert all(isinstance(v, float) for v in flat.values())


@pytest.mark.parametrize("dual_clip", [None, 1.1])
def test_per_token_advantages_match_the_tokenwise_definition(dual_clip) -> None:
    # Advantages that change sign inside a unit: the unit-level sums S+ / S- must equal
    # sum_t w_t * objective(r_u, A_t) token by token (ALGORITHMS.md 2 with per-token A).
    logp, old, inf, _, mask = random_batch(7, batch=3, length=8)
    gen = torch.Generator().manual_seed(7)
    adv = torch.randn(3, 8, generator=gen)
    units = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]]).expand(3, 8)
    mismatch = MismatchConfig(type="icepop", alpha=0.5, beta=2.0)
    cfg = AlgorithmConfig(loss=LossConfig(type="lpo", eps_low=0.05, eps_high=0.05, dual_clip=dual_clip), mismatch=mismatch)
    loss, grad, _ = loss_and_grad(cfg, logp, old, adv, units, mask, inf_logp=inf)

    x = logp.detach().clone().requires_grad_(True)
    k = (old - inf).exp()
    w = torch.where((k >= 0.5) & (k <= 2.0), k, torch.zeros_like(k)) * mask
    total = torch.zeros(())
    for b in range(3):
        for u in range(3):
            tok = (units[b] == u) & mask[b]
            kept = tok & (w[b] > 0)
            if not kept.any():
                continue
            r = (x[b][kept] - old[b][kept]).mean().exp()
            for t in torch.nonzero(tok).flatten().tolist():
                a = adv[b, t]
                obj = torch.minimum(r * a, r.clamp(0.95, 1.05) * a)
                if dual_clip is not None and a < 0:
                    obj = torch.maximum(obj, dual_clip * a)
                total = total - w[b, t] * obj
    (total / mask.sum()).backward()
    torch.testing.assert_close(loss, total / mask.sum())
    torch.testing.assert_close(grad, x.grad)
