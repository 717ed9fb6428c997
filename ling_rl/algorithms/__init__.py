"""RL algorithms as pure functions of tensors: advantages, linguistic-unit segmentation, policy
losses (ppo_token / lpo / gspo), train-inference mismatch correction and KL (docs: Algorithms).

No Ray, vLLM or model imports here. Names are loaded on first use so that importing
`ling_rl.algorithms.config` (the recipe schema) does not import torch.

    from ling_rl.algorithms import AlgorithmConfig, Segmenter, compute_advantages, policy_loss

    cfg = AlgorithmConfig()                                   # lpo + group_norm + icepop, no KL
    adv, flat = compute_advantages(rewards, group_ids, cfg.advantage)
    segmenter = Segmenter(token_bytes_from_tokenizer(tokenizer), cfg.segmentation)
    unit_ids = segmenter.segment_padded(token_ids, response_mask)
    loss, metrics = policy_loss(logp, old_logp, adv, unit_ids, response_mask, cfg, inf_logp=inf_logp)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ling_rl.algorithms.advantages import AdvantageEstimator, AdvantageResult, compute_advantages
    from ling_rl.algorithms.config import (
        AdvantageConfig,
        AlgorithmConfig,
        KLConfig,
        LossConfig,
        MismatchConfig,
        SegmentationConfig,
    )
    from ling_rl.algorithms.losses import (
        LossInputs,
        LossMetrics,
        PolicyMetrics,
        UnitPolicyLoss,
        needs_segmentation,
        policy_loss,
    )
    from ling_rl.algorithms.mismatch import MismatchCorrection, MismatchMetrics, mismatch_weights
    from ling_rl.algorithms.registries import (
        ADVANTAGE_ESTIMATORS,
        KL_ESTIMATORS,
        MISMATCH_CORRECTIONS,
        POLICY_LOSSES,
    )
    from ling_rl.algorithms.segmentation import Segmenter, token_bytes_from_tokenizer

_EXPORTS: dict[str, str] = {
    "AdvantageEstimator": "advantages",
    "AdvantageResult": "advantages",
    "compute_advantages": "advantages",
    "AdvantageConfig": "config",
    "AlgorithmConfig": "config",
    "KLConfig": "config",
    "LossConfig": "config",
    "MismatchConfig": "config",
    "SegmentationConfig": "config",
    "LossInputs": "losses",
    "LossMetrics": "losses",
    "PolicyMetrics": "losses",
    "UnitPolicyLoss": "losses",
    "needs_segmentation": "losses",
    "policy_loss": "losses",
    "MismatchCorrection": "mismatch",
    "MismatchMetrics": "mismatch",
    "mismatch_weights": "mismatch",
    "ADVANTAGE_ESTIMATORS": "registries",
    "KL_ESTIMATORS": "registries",
    "MISMATCH_CORRECTIONS": "registries",
    "POLICY_LOSSES": "registries",
    "Segmenter": "segmentation",
    "token_bytes_from_tokenizer": "segmentation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ling_rl.algorithms' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ling_rl.algorithms.{module}"), name)
    globals()[name] = value
    return value
