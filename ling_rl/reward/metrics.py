"""Typed metrics of one `RewardPool.score()` call."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_ERRORS_KEPT = 5


@dataclass
class PluginMetrics:
    """One plugin over one batch. Calls are slices of the batch, or groups for group-level plugins."""

    mean_score: float | None
    """Mean of the scores entering the total (error values included, skips excluded); None if all skipped."""
    calls: int
    latency_mean_s: float
    """Mean wall time of a call inside the worker."""
    latency_max_s: float
    failures: int
    """Calls that raised, returned a malformed result or lost their worker (retries included)."""
    infra_failures: int
    """Failed calls whose plugin raised `InfrastructureError` (a sandbox that did not start): their
    samples are skipped, not scored; any of them makes the step one without reward signal."""
    timeouts: int
    """Calls that exceeded `timeout_s` (retries included)."""
    skipped: int
    """Samples the plugin returned None for."""
    skipped_samples: int
    """Samples not trained on because this plugin is required and returned None for them."""
    failed_samples: int = 0
    """Samples whose (last) call failed, timed out or hit an infrastructure failure: the plugin
    could not judge them."""
    unscored_samples: int = 0
    """Of `failed_samples`, those left without a score and skipped (all of them unless the plugin
    sets a numeric `error_value`): not trained on, and out of pass rates when this is the
    curriculum's correctness plugin."""
    retried_samples: int = 0
    """Samples run again alone after their call over several samples failed or timed out."""
    errors: list[str] = field(default_factory=list)
    """Distinct failure messages (at most five), for logs."""
    extra: dict[str, float] = field(default_factory=dict)
    """Metrics the plugin returned through `RewardOutput`, averaged over its calls."""


@dataclass
class RewardMetrics:
    """A scored batch: per-plugin metrics plus totals."""

    plugins: dict[str, PluginMetrics]
    samples: int
    skipped: int
    """Samples not trained on: a required plugin, or every plugin, returned None for them."""
    reward_mean: float | None
    """Mean total reward over the samples that were not skipped."""
    elapsed_s: float
    samples_per_s: float
    workers_replaced: int
    """Workers killed for overrunning a sync call, or lost, and started again."""

    def as_dict(self, prefix: str = "reward") -> dict[str, float]:
        """Flat `prefix/...` scalars for trackers (None values are left out)."""
        out: dict[str, float] = {
            f"{prefix}/samples": self.samples,
            f"{prefix}/skipped": self.skipped,
            f"{prefix}/elapsed_s": self.elapsed_s,
            f"{prefix}/samples_per_s": self.samples_per_s,
            f"{prefix}/workers_replaced": self.workers_replaced,
        }
        if self.reward_mean is not None:
            out[f"{prefix}/mean"] = self.reward_mean
        for key, m in self.plugins.items():
            p = f"{prefix}/{key}"
            if m.mean_score is not None:
                out[f"{p}/mean"] = m.mean_score
            out.update({
                f"{p}/calls": m.calls,
                f"{p}/latency_mean_s": m.latency_mean_s,
                f"{p}/latency_max_s": m.latency_max_s,
                f"{p}/failures": m.failures,
                f"{p}/infra_failures": m.infra_failures,
                f"{p}/timeouts": m.timeouts,
                f"{p}/skipped": m.skipped,
                f"{p}/skipped_samples": m.skipped_samples,
                f"{p}/failed_samples": m.failed_samples,
                f"{p}/unscored_samples": m.unscored_samples,
                f"{p}/retried_samples": m.retried_samples,
            })
            out.update({f"{p}/{k}": v for k, v in m.extra.items()})
        return out
