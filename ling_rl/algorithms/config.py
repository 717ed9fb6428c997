"""Recipe sections of the algorithms package, mounted as `algorithm:` in a recipe.

Defaults follow the Ling 2.0 and Ring-1T reports (docs: Algorithms). Every `type` / `estimator` is checked against its
registry, so a user-registered entry is accepted and a typo lists the registered names.
This module imports no torch; validating a `type` imports the built-in implementations.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ling_rl.algorithms.registries import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    MISMATCH_CORRECTIONS,
    POLICY_LOSSES,
    load_builtins,
)
from ling_rl.registry import Registry, RegistryError
from ling_rl.schema import Section


def _check_registered(registry: Registry[Any], name: str) -> str:
    load_builtins()
    try:
        registry.get(name)
    except RegistryError as err:
        # pydantic turns ValueError (not KeyError) into a ValidationError with the field's path.
        raise ValueError(str(err)) from None
    return name


class AdvantageConfig(Section):
    """How a group's rewards become per-response advantages."""

    type: str = "group_norm"
    """Estimator: `group_norm` (GRPO, (R - mean) / (std + eps)), `group_mean` (Dr.GRPO, R - mean),
    `rloo` (R - mean of the others), or any registered name."""

    eps: float = Field(default=1e-6, gt=0)
    """Added to the group's standard deviation in `group_norm`."""

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        name = _check_registered(ADVANTAGE_ESTIMATORS, value)
        if not hasattr(ADVANTAGE_ESTIMATORS.get(name), "needs_pairs"):
            raise ValueError(f"advantage estimator {name!r} is registered without `needs_pairs`; register it as "
                             "ling_rl.algorithms.advantages.AdvantageEstimator(fn, needs_pairs=...)")
        return name

    @property
    def needs_pairs(self) -> bool:
        """Whether the estimator needs two responses per group: its registered `needs_pairs`."""
        load_builtins()
        return bool(ADVANTAGE_ESTIMATORS.get(self.type).needs_pairs)


class LossConfig(Section):
    """The clipped policy-gradient surrogate.

    `ppo_token`, `lpo` and `gspo` share one code path and differ only in the unit a ratio is
    taken over: a token, a linguistic unit (sentence-like span), or the whole response.
    """

    type: str = "lpo"
    """Loss: `lpo` (Ling 2.0), `ppo_token` (GRPO/DAPO), `gspo`, or any registered name."""

    eps_low: float | None = Field(default=None, ge=0, lt=1)
    """Lower clip: ratios below 1 - eps_low stop the gradient for negative advantages.
    None takes the loss type's default: lpo 0.03 (Ling 2.0), ppo_token 0.2 (DAPO),
    gspo 3e-4 (GSPO paper)."""

    eps_high: float | None = Field(default=None, ge=0)
    """Upper clip: ratios above 1 + eps_high stop the gradient for positive advantages.
    None takes the loss type's default: lpo 0.03, ppo_token 0.28 (DAPO clip-higher), gspo 4e-4."""

    dual_clip: float | None = Field(default=None, gt=1)
    """Dual-clip constant c > 1: for negative advantages the objective is bounded below by c * A,
    so a unit whose ratio exceeds c stops contributing gradient. None disables it."""

    loss_agg: Literal["token_mean", "seq_mean"] | None = None
    """`token_mean`: one mean over all response tokens of the batch (units weighted by their
    length); `seq_mean`: mean over responses of each response's token mean. None takes the loss
    type's default: `seq_mean` for gspo (the GSPO paper averages per sequence), `token_mean` for
    lpo and ppo_token. Read it through `aggregation()`."""

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        return _check_registered(POLICY_LOSSES, value)

    def clip_range(self) -> tuple[float, float]:
        """(eps_low, eps_high) with unset values taken from the loss type's defaults."""
        load_builtins()
        loss = POLICY_LOSSES.get(self.type)
        low = loss.default_eps_low if self.eps_low is None else self.eps_low
        high = loss.default_eps_high if self.eps_high is None else self.eps_high
        return float(low), float(high)

    def aggregation(self) -> Literal["token_mean", "seq_mean"]:
        """`loss_agg`, or the loss type's default when it is unset (the one place that resolves it)."""
        if self.loss_agg is not None:
            return self.loss_agg
        load_builtins()
        return POLICY_LOSSES.get(self.type).default_loss_agg


DEFAULT_DELIMITERS: tuple[str, ...] = (
    ".", "!", "?", ";", ":", ",",
    "\u3002", "\uff01", "\uff1f", "\uff1b", "\uff1a", "\uff0c", "\u3001",  # 。！？；：，、
    "\n",
)  # fmt: skip


class SegmentationConfig(Section):
    """How a response is cut into linguistic units for LPO."""

    delimiters: list[str] = Field(default_factory=lambda: list(DEFAULT_DELIMITERS))
    """Pause punctuation: a unit ends after the token holding the last byte of one of these."""

    min_unit_tokens: int = Field(default=2, ge=1)
    """Units shorter than this merge into the next unit (the last one into the previous)."""

    protect_numbers: bool = True
    """Do not cut at `.`, `,` or `:` between two digits (3.14, 1,000, 12:30) nor after a
    numbered list marker at the start of a line (`2. `, `10) `)."""

    protect_code: bool = True
    """Do not cut inside inline code (`x = 1; y`) or fenced code blocks (``` or ~~~)."""

    protect_math: bool = True
    """Do not cut inside LaTeX: `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`."""

    @field_validator("delimiters")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("delimiters must not be empty (use loss type gspo for whole responses)")
        if any(d == "" for d in value):
            raise ValueError("delimiters must be non-empty strings")
        return value


class MismatchConfig(Section):
    """Correction of the train/inference probability mismatch (IcePop, TIS).

    With k = pi_old / pi_inf per token (no gradient), the token's loss term is multiplied by M(k).
    """

    type: str = "icepop"
    """`icepop` (M(k) = k inside [alpha, beta], else 0: the token is masked), `tis`
    (M(k) = min(k, c)), `none`, or any registered name. All but `none` need inference log-probs."""

    alpha: float = Field(default=0.5, ge=0)
    """IcePop lower band edge."""

    beta: float = Field(default=5.0, gt=0)
    """IcePop upper band edge (the Ring-1T report found 2.0 unstable); may be infinite."""

    c: float = Field(default=2.0, gt=0)
    """TIS truncation: weights above c are cut to c; may be infinite."""

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        return _check_registered(MISMATCH_CORRECTIONS, value)

    @model_validator(mode="after")
    def _band(self) -> MismatchConfig:
        if not self.alpha < self.beta:
            raise ValueError(f"icepop band needs alpha < beta, got alpha={self.alpha}, beta={self.beta}")
        if math.isnan(self.alpha) or math.isnan(self.beta) or math.isnan(self.c):
            raise ValueError("alpha, beta and c must not be NaN")
        return self


class KLConfig(Section):
    """A KL(pi_theta || pi_ref) penalty added to the loss."""

    estimator: str = "k3"
    """Per-token estimator of Schulman's note: `k1` (log ratio), `k2` (half squared log ratio),
    `k3` (low-variance, unbiased, non-negative), or any registered name."""

    coef: float = Field(default=0.0, ge=0)
    """beta in J - beta * KL. 0 disables the term and no reference model is needed."""

    @field_validator("estimator")
    @classmethod
    def _known(cls, value: str) -> str:
        return _check_registered(KL_ESTIMATORS, value)

    @property
    def needs_reference(self) -> bool:
        """Whether the learner must compute reference-model log-probs."""
        return self.coef > 0


class AlgorithmConfig(Section):
    """The `algorithm:` section of a recipe."""

    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    """Per-response advantages from group rewards."""

    loss: LossConfig = Field(default_factory=LossConfig)
    """Policy loss: the unit a ratio is taken over, clipping, aggregation."""

    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    """Linguistic-unit segmentation (used when the loss needs it, e.g. lpo)."""

    mismatch: MismatchConfig = Field(default_factory=MismatchConfig)
    """Train/inference mismatch correction."""

    kl: KLConfig = Field(default_factory=KLConfig)
    """Optional KL penalty to a reference model."""
