"""Per-token estimators of KL(pi_theta || pi_ref) from samples (J. Schulman, "Approximating KL
Divergence", 2020). With log_ratio = log pi_theta(y_t) - log pi_ref(y_t):

    k1 = log_ratio                              unbiased, high variance, can be negative
    k2 = log_ratio^2 / 2                        biased, low variance
    k3 = exp(-log_ratio) - 1 + log_ratio        unbiased, low variance, always >= 0
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from ling_rl.algorithms.registries import KL_ESTIMATORS

# Keeps exp(-log_ratio) in k3 finite (and its gradient) when the two policies disagree wildly.
LOG_RATIO_BOUND = 20.0


class KLFn(Protocol):
    """log pi_theta [B, T], log pi_ref [B, T] -> per-token KL estimate [B, T]."""

    def __call__(self, logp: Tensor, ref_logp: Tensor) -> Tensor: ...


@KL_ESTIMATORS.register("k1")
def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp).square()


@KL_ESTIMATORS.register("k3")
def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    log_ratio = (logp - ref_logp).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return (-log_ratio).exp() - 1 + log_ratio
