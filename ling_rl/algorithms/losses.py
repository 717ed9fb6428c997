"""Clipped policy-gradient losses over units of tokens (ALGORITHMS.md sections 2-4).

One code path: a unit's ratio is the geometric mean of its tokens' ratios,

    r_u = exp( mean_{t in u} [log pi_theta(y_t) - log pi_old(y_t)] ),

every token t of unit u carries the clipped objective min(r_u A_t, clip(r_u, 1-eps_low, 1+eps_high) A_t)
times its mismatch weight M(k_t), and the loss is minus the token mean (or sequence mean) of that.
Summing the identical terms of a unit's |s_u| tokens gives |s_u| * min(...), the token-weighted
unit objective of LPO. The registered losses differ only in the units:

    ppo_token  every token is a unit      (GRPO / DAPO, clip-higher, optional dual-clip)
    lpo        linguistic units           (unit ids from `Segmenter`)
    gspo       the whole response         (one ratio per response)

Unit means are segment means over a flattened (row, unit) index with index_add, so there is no
Python loop over rows; a token unit skips the segment mean entirely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

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
    """Everything a policy loss sees; all [B, T] padded, aligned with `response_mask`."""

    logp: Tensor
    """log pi_theta of the sampled tokens (requires grad)."""

    old_logp: Tensor
    """log pi_old (detached)."""

    advantages: Tensor
    """Per-token advantages [B, T]."""

    response_mask: Tensor
    """bool, True on response tokens."""

    weight: Tensor | None
    """Mismatch weights M(k_t) (0 masks a token), or None for weight 1 everywhere."""

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

    def __call__(self, inputs: LossInputs, cfg: LossConfig) -> tuple[Tensor, PolicyMetrics]:
        """Per-token loss terms [B, T] (zero off the response; aggregation is the caller's) and metrics."""
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
    ),
)


def needs_segmentation(cfg: LossConfig) -> bool:
    """Whether the configured loss needs unit ids (the learner segments only then)."""
    return bool(POLICY_LOSSES.get(cfg.type).needs_segmentation)


def unit_surrogate(
    inputs: LossInputs, unit_ids: Tensor | None, eps_low: float, eps_high: float, dual_clip: float | None
) -> tuple[Tensor, PolicyMetrics]:
    """The shared core: per-token terms of minus the clipped unit objective, and its metrics."""
    mask = inputs.response_mask
    dtype = inputs.logp.dtype
    keep = mask if inputs.weight is None else mask & (inputs.weight > 0)
    # where(), not multiplication: padding may hold -inf or NaN log-probs.
    log_ratio = torch.where(mask, inputs.logp - inputs.old_logp, 0.0)
    batch, length = mask.shape

    if unit_ids is None:
        unit_log_ratio = log_ratio
        index = None
    else:
        rows = torch.arange(batch, device=mask.device).unsqueeze(1) * length
        index = (torch.where(mask, unit_ids, 0) + rows).reshape(-1)
        keep_f = keep.to(dtype).reshape(-1)
        zeros = torch.zeros(batch * length, dtype=dtype, device=mask.device)
        sums = zeros.index_add(0, index, log_ratio.reshape(-1) * keep_f)
        kept = zeros.index_add(0, index, keep_f)
        unit_log_ratio = (sums / kept.clamp(min=1)).index_select(0, index).view(batch, length)

    ratio = unit_log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()
    adv = inputs.advantages
    objective = torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    if dual_clip is not None:
        objective = torch.where(adv < 0, torch.maximum(objective, dual_clip * adv), objective)
    token_weight = mask.to(dtype) if inputs.weight is None else inputs.weight
    terms = -objective * token_weight

    with torch.no_grad():
        metrics = _policy_metrics(inputs, keep, index, ratio.detach(), eps_low, eps_high, dual_clip)
    return terms, metrics


def _policy_metrics(
    inputs: LossInputs,
    keep: Tensor,
    index: Tensor | None,
    ratio: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
) -> PolicyMetrics:
    mask = inputs.response_mask
    adv = inputs.advantages
    n_tokens = mask.sum()
    n_responses = mask.any(dim=1).sum()
    # Only unmasked tokens count: a token with mismatch weight 0 gets no gradient either way.
    clipped = keep & (((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low)))
    if dual_clip is not None:
        dual = (keep & (adv < 0) & (ratio > dual_clip)).sum()
    else:
        dual = torch.zeros((), dtype=n_tokens.dtype, device=mask.device)

    if index is None:
        n_units = n_tokens
        n_clipped_units = clipped.sum()
        unit_ratio = ratio[keep]
    else:
        size = mask.numel()
        zeros = torch.zeros(size, dtype=torch.float32, device=mask.device)
        unit_tokens = zeros.index_add(0, index, mask.reshape(-1).float())
        unit_kept = zeros.index_add(0, index, keep.reshape(-1).float())
        unit_clipped = zeros.index_add(0, index, clipped.reshape(-1).float())
        n_units = (unit_tokens > 0).sum()
        n_clipped_units = (unit_clipped > 0).sum()
        # Every token of a unit carries the unit's ratio: scatter them back to one value per unit.
        unit_values = torch.zeros(size, dtype=ratio.dtype, device=mask.device).index_copy(0, index, ratio.reshape(-1))
        unit_ratio = unit_values[unit_kept > 0]

    def frac(num: Tensor, den: Tensor) -> Tensor:
        return num.float() / den.clamp(min=1).float()

    if unit_ratio.numel():
        r_mean, r_min, r_max = unit_ratio.float().mean(), unit_ratio.float().min(), unit_ratio.float().max()
    else:
        r_mean = r_min = r_max = torch.ones((), device=mask.device)
    return PolicyMetrics(
        clip_frac_unit=frac(n_clipped_units, n_units),
        clip_frac_token=frac(clipped.sum(), n_tokens),
        dual_clip_frac_token=frac(dual, n_tokens),
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


def _check_unit_ids(unit_ids: Tensor, mask: Tensor) -> None:
    if torch.is_floating_point(unit_ids) or unit_ids.dtype == torch.bool:
        raise ValueError(f"unit_ids must be an integer tensor, got {unit_ids.dtype}")
    # An id >= T would silently land in the next row's units.
    length = mask.shape[1]
    if bool((mask & ((unit_ids < 0) | (unit_ids >= length))).any()):
        raise ValueError(f"unit_ids on response tokens must lie in [0, T={length})")


def _aggregate(per_token: Tensor, mask: Tensor, loss_agg: str, denominator: float | None) -> Tensor:
    if loss_agg == "token_mean":
        total, count = per_token.sum(), mask.sum()
    else:
        total = (per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()
        count = mask.any(dim=1).sum()
    if denominator is not None:
        return total / denominator
    return total / count.clamp(min=1)


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
    if advantages.shape == logp.shape[:1]:
        advantages = advantages.unsqueeze(1).expand_as(logp)
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages must be [B] or [B, T] = {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    if cfg.kl.coef > 0 and ref_logp is None:
        raise ValueError("algorithm.kl.coef > 0 needs reference log-probs (ref_logp)")
    if denominator is not None and not denominator > 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    mask = response_mask.bool()
    if unit_ids is not None:
        _check_unit_ids(unit_ids, mask)
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
    pg_loss = _aggregate(pg_terms, mask, cfg.loss.loss_agg, denominator)

    kl_value: Tensor | None = None
    loss = pg_loss
    if ref_logp is not None:
        estimator: KLFn = KL_ESTIMATORS.get(cfg.kl.estimator)
        # Zero both sides off the response: padding may hold NaN, and where() alone would still
        # send NaN * 0 back through the estimator's backward.
        kl_terms = estimator(torch.where(mask, logp, 0.0), torch.where(mask, ref_logp.detach(), 0.0))
        kl_terms = kl_terms * mask.to(logp.dtype)
        kl_value = _aggregate(kl_terms, mask, cfg.loss.loss_agg, denominator)
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
