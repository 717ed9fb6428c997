"""What a metric is: a flat `section/name` key and a real number.

Naming convention (every sink shows the same keys):

    reward/mean, reward/<plugin>/mean   reward workers (per-plugin breakdown under the plugin's key)
    batch/*, advantage/*                the train batch built from scored rollouts
    rollout/*                           response lengths, truncation
    train/loss, train/grad_norm, ...    learner scalars (the loop prefixes bare learner names with `train/`)
    policy/clip_frac_unit, ...          the policy-loss diagnostics
    mismatch/*                          train/inference mismatch correction (icepop / tis)
    sync/gap_mean, sync/gap_max         |old log-prob - vLLM log-prob| after a weight sync
    time/<phase>, time/other, time/step seconds per phase of the step (`PhaseTimer`)

Keys are flat strings with `/` separating the section; W&B groups its charts by the section.
`step` and `time` are written by the tracker itself, and a leading `_` is W&B's own namespace.
Values must be real numbers; NaN and infinities are allowed (a diverging loss is worth seeing)
and are stored as `null` in metrics.jsonl.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

RESERVED_KEYS = frozenset({"step", "time"})


class MetricError(ValueError):
    """A metric the tracker cannot log; the message names the key."""


def check_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """Validated copy of `metrics` as `key -> float`, or `MetricError` naming the first bad key."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise MetricError(f"metric key {key!r}: keys are non-empty strings like 'reward/mean'")
        if key in RESERVED_KEYS or key.startswith("_"):
            raise MetricError(f"metric {key!r}: the name is reserved ('step', 'time' and names starting "
                              "with '_' are written by the tracker or W&B)")
        if not isinstance(value, numbers.Real):
            hint = " (call .item() on a 0-d tensor)" if hasattr(value, "item") else ""
            raise MetricError(f"metric {key!r}: expected a real number, got {type(value).__name__} "
                              f"{value!r:.80}{hint}")
        out[key] = float(value)
    return out
