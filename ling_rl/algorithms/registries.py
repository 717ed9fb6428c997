"""The four extension points of the algorithms package, one registry each.

This module imports no torch so that `ling_rl.algorithms.config` stays light; the built-in entries
register themselves when their modules (`advantages`, `losses`, `mismatch`, `kl`) are imported,
which `load_builtins()` does.

Extending, e.g. a new advantage estimator usable as `algorithm.advantage.type: my_adv`:

    from ling_rl.algorithms.advantages import AdvantageEstimator
    from ling_rl.algorithms.registries import ADVANTAGE_ESTIMATORS

    def my_adv(rewards, group_index, sizes, cfg): ...
    ADVANTAGE_ESTIMATORS.add("my_adv", AdvantageEstimator(my_adv, needs_pairs=False))
"""

from __future__ import annotations

import importlib
from typing import Any

from ling_rl.registry import Registry

# Values are typed `Any` here to keep this module free of torch; each implementing module
# documents the entry's type (see `advantages.AdvantageEstimator`, `losses.PolicyLoss`,
# `mismatch.MismatchFn`, `kl.KLFn`).
ADVANTAGE_ESTIMATORS: Registry[Any] = Registry("advantage estimator")
POLICY_LOSSES: Registry[Any] = Registry("policy loss")
MISMATCH_CORRECTIONS: Registry[Any] = Registry("mismatch correction")
KL_ESTIMATORS: Registry[Any] = Registry("KL estimator")

_BUILTIN_MODULES = (
    "ling_rl.algorithms.advantages",
    "ling_rl.algorithms.losses",
    "ling_rl.algorithms.mismatch",
    "ling_rl.algorithms.kl",
)


def load_builtins() -> None:
    """Import the modules that register the built-in entries (idempotent: imports are cached)."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
