"""Train/inference mismatch correction for MoE policies (Ring-1T report, section 2.3.2).

With k_t = pi_old(y_t) / pi_inf(y_t), computed without gradient, each token's loss term is
multiplied by a weight M(k_t). A weight of exactly 0 masks the token: it drops out of its unit's
ratio mean but stays in the loss normalizer (see `losses`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ling_rl.algorithms.config import MismatchConfig
from ling_rl.algorithms.registries import MISMATCH_CORRECTIONS

# exp(20) ~ 4.9e8: far outside any sensible band, yet keeps k finite so 0 * k never makes NaN.
LOG_K_BOUND = 20.0


class MismatchFn(Protocol):
    """log_k [B, T] (detached, clamped to +-LOG_K_BOUND) -> per-token weight [B, T]."""

    def __call__(self, log_k: Tensor, cfg: MismatchConfig) -> Tensor: ...


@dataclass(frozen=True)
class MismatchCorrection:
    """A registry entry: the weight function, and whether it needs inference log-probs at all."""

    weight: MismatchFn
    needs_inference_logp: bool = True


def _icepop(log_k: Tensor, cfg: MismatchConfig) -> Tensor:
    """M(k) = k inside [alpha, beta], 0 outside."""
    k = log_k.exp()
    in_band = (k >= cfg.alpha) & (k <= cfg.beta)
    return torch.where(in_band, k, torch.zeros_like(k))


def _tis(log_k: Tensor, cfg: MismatchConfig) -> Tensor:
    """Truncated importance sampling: M(k) = min(k, c)."""
    return log_k.exp().clamp(max=cfg.c)


def _none(log_k: Tensor, cfg: MismatchConfig) -> Tensor:
    return torch.ones_like(log_k)


MISMATCH_CORRECTIONS.add("icepop", MismatchCorrection(_icepop))
MISMATCH_CORRECTIONS.add("tis", MismatchCorrection(_tis))
MISMATCH_CORRECTIONS.add("none", MismatchCorrection(_none, needs_inference_logp=False))


@dataclass(frozen=True)
class MismatchMetrics:
    """0-d tensors over response tokens (call `.item()` when logging)."""

    masked_frac: Tensor
    """Fraction of response tokens whose weight is 0."""

    mean_abs_log_k: Tensor
    """Mean |log pi_old - log pi_inf|."""

    max_abs_log_k: Tensor
    """Max |log pi_old - log pi_inf|."""


def mismatch_weights(
    old_logp: Tensor, inf_logp: Tensor | None, response_mask: Tensor, cfg: MismatchConfig
) -> tuple[Tensor | None, MismatchMetrics | None]:
    """Per-token weights M(k_t) and their metrics; (None, None) without inference log-probs.

    `inf_logp` may be None only for a correction that does not need it (`none`).
    """
    correction: MismatchCorrection = MISMATCH_CORRECTIONS.get(cfg.type)
    if inf_logp is None:
        if correction.needs_inference_logp:
            raise ValueError(
                f"mismatch correction {cfg.type!r} needs inference log-probs (inf_logp); "
                "pass them from the rollout engine or set algorithm.mismatch.type: none"
            )
        return None, None
    if inf_logp.shape != old_logp.shape:
        raise ValueError(f"inf_logp shape {tuple(inf_logp.shape)} != old_logp shape {tuple(old_logp.shape)}")
    mask = response_mask.bool()
    with torch.no_grad():
        raw_log_k = (old_logp - inf_logp).detach().float()
        abs_log_k = torch.where(mask, raw_log_k.abs(), torch.zeros_like(raw_log_k))
        n = mask.sum().clamp(min=1)
        weight = correction.weight(raw_log_k.clamp(-LOG_K_BOUND, LOG_K_BOUND), cfg).to(old_logp.dtype)
        weight = torch.where(mask, weight, torch.zeros_like(weight))
        metrics = MismatchMetrics(
            masked_frac=((weight == 0) & mask).sum() / n,
            mean_abs_log_k=abs_log_k.sum() / n,
            max_abs_log_k=abs_log_k.max() if abs_log_k.numel() else abs_log_k.sum(),
        )
    return weight, metrics
