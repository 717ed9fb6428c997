"""Clipped policy-gradient losses over units of tokens (docs: Algorithms).

One code path: a unit's ratio is the geometric mean of its tokens' ratios,

    r_u = exp( mean_{t in u, unmasked} [log pi_theta(y_t) - log pi_old(y_t)] ),

and every token t of unit u carries the clipped objective min(r_u A_t, clip(r_u) A_t) times its
mismatch weight w_t = M(k_t); the loss is minus the token mean (or sequence mean) of that. The
registered losses differ only in the units:

    ppo_token  every token is a unit      (GRPO / DAPO, clip-higher, optional dual-clip)
    lpo        linguistic units           (unit ids from `Segmenter`)
    gspo       the whole response         (one ratio per response)

Since min(r A, clip(r) A) = A min(r, 1 + eps_high) for A > 0 and A max(r, 1 - eps_low) for A < 0
(capped at c with dual-clip), a unit's summed objective is exactly

    S+_u min(r_u, 1 + eps_high) + S-_u min(max(r_u, 1 - eps_low), c),
    S+_u = sum_{t in u} w_t max(A_t, 0),   S-_u = sum_{t in u} w_t min(A_t, 0),

which with one advantage per response and w = 1 is |s_u| * min(r_u A, clip(r_u) A): LPO's
token-weighted unit objective. So the surrogate is evaluated once per unit, on a [B, K] grid of
(response, unit), and only the segment sums touch every token (index_add over a flattened
(row, unit) index: no Python loop over rows). Token units skip the segment sums altogether.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from ling_rl.algorithms.config import AlgorithmConfig, LossConfig
from ling_rl.algorithms.kl import KLFn
from ling_rl.algorithms.mismatch import MismatchMetrics, mismatch_weights
from ling_rl.algorithms.registries import KL_ESTIMATORS, POLICY_LOSSES

# Unit log-ratios are clamped to +-20 before exp: r stays finite (<= 4.9e8) so a masked or clipped
# term never computes 0 * inf = NaN in the backward pass. A unit that far off gets no gradient.
LOG_RATIO_BOUND = 20.0


@dataclass(frozen=True)
class LossInputs:
    """Everything a policy loss sees; [B, T] tensors are padded and aligned with `response_mask`."""

    logp: Tensor
    """log pi_theta of the sampled tokens (requires grad)."""

    old_logp: Tensor
    """log pi_old (detached)."""

    advantages: Tensor
    """[B] (one per response, the usual case) or [B, T] per token."""

    response_mask: Tensor
    """bool, True on response tokens."""

    weight: Tensor | None
    """Mismatch weights M(k_t), 0 off the response (0 also masks a token), or None for weight 1."""

    unit_ids: Tensor | None
    """Per-token unit index within its row (0 <= id < T), or None when the loss does not use them."""


@dataclass(frozen=True)
class PolicyMetrics:
    """0-d detached tensors describing the surrogate of one batch."""

    clip_frac_unit: Tensor
    """Fraction of units whose clip stops the gradient (A > 0 and r > 1 + eps_high, or A < 0 and r < 1 - eps_low)."""

    clip_frac_token: Tensor
    """Fraction of response tokens in such units."""

    dual_clip_frac_token: Tensor
    """Fraction of response tokens whose unit is cut by dual-clip (A < 0 and r > c); 0 when disabled."""

    units_per_response: Tensor
    """Mean number of units per non-empty response."""

    mean_unit_len: Tensor
    """Mean unit length in tokens."""

    ratio_mean: Tensor
    """Mean of the unit ratios r_u (over units with at least one unmasked token)."""

    ratio_min: Tensor
    ratio_max: Tensor


@dataclass(frozen=True)
class LossMetrics:
    """What `policy_loss` reports besides the loss; 0-d detached tensors (one `.item()` each to log)."""

    loss: Tensor
    """The total loss (policy term + kl coef * kl)."""

    pg_loss: Tensor
    """The policy-gradient term alone."""

    kl: Tensor | None
    """Aggregated KL(pi_theta || pi_ref) estimate, when reference log-probs were given."""

    policy: PolicyMetrics
    mismatch: MismatchMetrics | None

    def as_dict(self) -> dict[str, float]:
        """Flat `name -> float` for trackers, e.g. {"loss": ..., "policy/clip_frac_unit": ...}."""
        out = {"loss": float(self.loss), "pg_loss": float(self.pg_loss)}
        if self.kl is not None:
            out["kl"] = float(self.kl)
        for group, value in (("policy", self.policy), ("mismatch", self.mismatch)):
            if value is not None:
                for f in fields(value):
                    out[f"{group}/{f.name}"] = float(getattr(value, f.name))
        return out


UnitFn = Callable[[LossInputs], Tensor | None]


@dataclass(frozen=True)
class UnitPolicyLoss:
    """A registered policy loss: the clipped unit surrogate with a choice of units.

    A user-registered loss may be any object with these attributes and this `__call__`.
    """

    units: UnitFn
    """LossInputs -> unit ids [B, T], or None for one unit per token."""

    default_eps_low: float
    default_eps_high: float
    needs_segmentation: bool
    """Whether the learner must pass unit ids from the `Segmenter`."""

    default_loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    """Aggregation used when `algorithm.loss.loss_agg` is unset."""

    def __call__(self, inputs: LossInputs, cfg: LossConfig) -> tuple[Tensor, PolicyMetrics]:
        """Minus the objective as a [B, K] grid whose row sums are each response's summed token
        objective (aggregation is the caller's), and the metrics."""
        eps_low, eps_high = cfg.clip_range()
        return unit_surrogate(inputs, self.units(inputs), eps_low, eps_high, cfg.dual_clip)


def _given_units(inputs: LossInputs) -> Tensor:
    if inputs.unit_ids is None:
        raise ValueError("this loss needs unit_ids: segment the responses with ling_rl.algorithms.Segmenter")
    return inputs.unit_ids


POLICY_LOSSES.add(
    "ppo_token",
    UnitPolicyLoss(units=lambda inputs: None, default_eps_low=0.2, default_eps_high=0.28, needs_segmentation=False),
)
POLICY_LOSSES.add(
    "lpo",
    UnitPolicyLoss(units=_given_units, default_eps_low=0.03, default_eps_high=0.03, needs_segmentation=True),
)
POLICY_LOSSES.add(
    "gspo",
    UnitPolicyLoss(
        units=lambda inputs: torch.zeros_like(inputs.response_mask, dtype=torch.long),
        default_eps_low=3e-4,
        default_eps_high=4e-4,
        needs_segmentation=False,
        default_loss_agg="seq_mean",  # the GSPO paper's per-sequence mean
    ),
)


def needs_segmentation(cfg: LossConfig) -> bool:
    """Whether the configured loss needs unit ids (the learner segments only then)."""
    return bool(POLICY_LOSSES.get(cfg.type).needs_segmentation)


def unit_surrogate(
    inputs: LossInputs, unit_ids: Tensor | None, eps_low: float, eps_high: float, dual_clip: float | None
) -> tuple[Tensor, PolicyMetrics]:
    """The shared core: minus the clipped objective of each unit, as a [B, K] grid whose row sums
    are each response's summed token objective (K = T for token units), and its metrics."""
    mask = inputs.response_mask
    dtype = inputs.logp.dtype
    mask_f = mask.to(dtype)
    # where(), not multiplication: padding may hold -inf or NaN log-probs.
    log_ratio = torch.where(mask, inputs.logp - inputs.old_logp, 0.0)
    if inputs.weight is None:
        weight, keep_f = mask_f, mask_f
    else:
        weight = inputs.weight
        keep_f = (weight > 0).to(dtype)
        log_ratio = log_ratio * keep_f  # a masked token leaves its unit's ratio mean
    adv = inputs.advantages
    if adv.ndim == 1:
        adv = adv.unsqueeze(1)  # constant over the row: S+- = (unit weight) * A, no extra segment sums

    segment_sum: Callable[[Tensor], Tensor] | None = None
    if unit_ids is None:
        unit_log_ratio, kept, tokens, unit_weight = log_ratio, keep_f, mask_f, weight
    else:
        segment_sum = _segment_sum_fn(unit_ids, mask)
        kept = segment_sum(keep_f)
        unit_log_ratio = segment_sum(log_ratio) / kept.clamp(min=1)
        tokens = kept if inputs.weight is None else segment_sum(mask_f)
        unit_weight = kept if inputs.weight is None else segment_sum(weight)
    if segment_sum is not None and adv.shape[1] > 1:
        pos, neg = segment_sum(weight * adv.clamp(min=0)), segment_sum(weight * adv.clamp(max=0))
    else:
        pos, neg = unit_weight * adv.clamp(min=0), unit_weight * adv.clamp(max=0)

    ratio = unit_log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()
    objective = pos * ratio.clamp(max=1 + eps_high) + neg * ratio.clamp(min=1 - eps_low, max=dual_clip)
    with torch.no_grad():
        metrics = _policy_metrics(ratio.detach(), pos, neg, kept, tokens, mask, eps_low, eps_high, dual_clip)
    return -objective, metrics


def _segment_sum_fn(unit_ids: Tensor, mask: Tensor) -> Callable[[Tensor], Tensor]:
    """x [B, T] -> [B, K] sums over each row's units, K = 1 + the largest unit id on the response."""
    safe = torch.where(mask, unit_ids, 0)
    low, high = torch.aminmax(safe) if safe.numel() else (safe.new_zeros(()), safe.new_zeros(()))
    batch, length = mask.shape
    # One host sync, and the check that keeps an id >= T from landing in the next row's units.
    if int(low) < 0 or int(high) >= length:
        raise ValueError(f"unit_ids on response tokens must lie in [0, T={length}); got {int(low)}..{int(high)}")
    units = int(high) + 1
    index = (safe + torch.arange(batch, device=mask.device).unsqueeze(1) * units).reshape(-1)

    def segment_sum(x: Tensor) -> Tensor:
        out = torch.zeros(batch * units, dtype=x.dtype, device=x.device)
        return out.index_add(0, index, x.reshape(-1)).view(batch, units)

    return segment_sum


def _policy_metrics(
    ratio: Tensor,
    pos: Tensor,
    neg: Tensor,
    kept: Tensor,
    tokens: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
) -> PolicyMetrics:
    """Unit-level metrics from the [B, K] grid (tokens: response tokens per unit)."""
    n_tokens = tokens.sum()
    n_units = (tokens > 0).sum()
    n_responses = mask.any(dim=1).sum()
    clipped = ((pos > 0) & (ratio > 1 + eps_high)) | ((neg < 0) & (ratio < 1 - eps_low))
    if dual_clip is not None:
        dual_tokens = torch.where((neg < 0) & (ratio > dual_clip), tokens, 0.0).sum()
    else:
        dual_tokens = torch.zeros((), device=mask.device)
    live = kept > 0
    n_live = live.sum()

    def frac(num: Tensor, den: Tensor) -> Tensor:
        return num.float() / den.clamp(min=1).float()

    if int(n_live) > 0:
        r_mean = frac(torch.where(live, ratio, 0.0).sum(), n_live)
        r_min = torch.where(live, ratio, torch.inf).amin().float()
        r_max = torch.where(live, ratio, -torch.inf).amax().float()
    else:
        r_mean = r_min = r_max = torch.ones((), device=mask.device)
    return PolicyMetrics(
        clip_frac_unit=frac(clipped.sum(), n_units),
        clip_frac_token=frac(torch.where(clipped, tokens, 0.0).sum(), n_tokens),
        dual_clip_frac_token=frac(dual_tokens, n_tokens),
        units_per_response=frac(n_units, n_responses),
        mean_unit_len=frac(n_tokens, n_units),
        ratio_mean=r_mean,
        ratio_min=r_min,
        ratio_max=r_max,
    )


def _check_shapes(logp: Tensor, named: dict[str, Tensor | None]) -> None:
    if logp.ndim != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    if not torch.is_floating_point(logp):
        raise ValueError(f"logp must be floating point, got {logp.dtype}")
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != logp.shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} != logp shape {tuple(logp.shape)}")


def aggregation_count(mask: Tensor, cfg: LossConfig) -> Tensor:
    """What the loss is a mean over (0-d): response tokens (`token_mean`) or non-empty responses
    (`seq_mean`). The learner passes this count of the whole optimizer step as
    `policy_loss(denominator=...)`."""
    return mask.sum() if cfg.aggregation() == "token_mean" else mask.any(dim=1).sum()


def _aggregate(row_terms: Tensor, mask: Tensor, cfg: LossConfig, denominator: float | None) -> Tensor:
    """row_terms [B, any]: each row sums to its response's summed token terms."""
    if cfg.aggregation() == "token_mean":
        total = row_terms.sum()
    else:
        total = (row_terms.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()
    if denominator is not None:
        return total / denominator
    return total / aggregation_count(mask, cfg).clamp(min=1)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    unit_ids: Tensor | None,
    response_mask: Tensor,
    cfg: AlgorithmConfig,
    inf_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    denominator: float | None = None,
) -> tuple[Tensor, LossMetrics]:
    """The loss to minimize for one batch, and its metrics.

    logp, old_logp, response_mask, unit_ids, inf_logp, ref_logp: [B, T] padded, aligned (the
    log-prob of the token at each position). advantages: [B] (one per response) or [B, T].
    unit_ids: per-token unit index from the `Segmenter` (needed when the loss type uses it,
    ignored otherwise). inf_logp: rollout-engine log-probs for the mismatch correction.
    ref_logp: reference-model log-probs, needed only when `cfg.kl.coef > 0`.
    denominator: the aggregation count of the whole optimizer step (response tokens for
    `token_mean`, non-empty responses for `seq_mean`) when it spans several micro-batches or ranks;
    default: this batch's.
    """
    _check_shapes(
        logp,
        {"old_logp": old_logp, "response_mask": response_mask, "unit_ids": unit_ids, "inf_logp": inf_logp, "ref_logp": ref_logp},
    )
    if advantages.shape != logp.shape[:1] and advantages.shape != logp.shape:
        raise ValueError(f"advantages must be [B] or [B, T] = {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    if cfg.kl.coef > 0 and ref_logp is None:
        raise ValueError("algorithm.kl.coef > 0 needs reference log-probs (ref_logp)")
    if denominator is not None and not denominator > 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    if unit_ids is not None and (torch.is_floating_point(unit_ids) or unit_ids.dtype == torch.bool):
        raise ValueError(f"unit_ids must be an integer tensor, got {unit_ids.dtype}")
    mask = response_mask.bool()
    old_logp = old_logp.detach()
    weight, mismatch = mismatch_weights(old_logp, inf_logp, mask, cfg.mismatch)
    inputs = LossInputs(
        logp=logp,
        old_logp=old_logp,
        advantages=advantages.detach().to(logp.dtype),
        response_mask=mask,
        weight=weight,
        unit_ids=unit_ids,
    )
    loss_fn = POLICY_LOSSES.get(cfg.loss.type)
    pg_terms, policy = loss_fn(inputs, cfg.loss)
    pg_loss = _aggregate(pg_terms, mask, cfg.loss, denominator)

    kl_value: Tensor | None = None
    loss = pg_loss
    if ref_logp is not None:
        estimator: KLFn = KL_ESTIMATORS.get(cfg.kl.estimator)
        # Zero both sides off the response: padding may hold NaN, and where() alone would still
        # send NaN * 0 back through the estimator's backward.
        kl_terms = estimator(torch.where(mask, logp, 0.0), torch.where(mask, ref_logp.detach(), 0.0))
        kl_terms = kl_terms * mask.to(logp.dtype)
        kl_value = _aggregate(kl_terms, mask, cfg.loss, denominator)
        if cfg.kl.coef > 0:
            loss = pg_loss + cfg.kl.coef * kl_value

    metrics = LossMetrics(
        loss=loss.detach(),
        pg_loss=pg_loss.detach(),
        kl=None if kl_value is None else kl_value.detach(),
        policy=policy,
        mismatch=mismatch,
    )
    return loss, metrics
