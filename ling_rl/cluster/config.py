"""The `cluster:` section: where the roles run."""

from __future__ import annotations

from pydantic import Field

from ling_rl.schema import Section


class RoleResources(Section):
    """Resources of one actor of a role."""

    num_cpus: float = Field(default=1, ge=0)
    """CPUs reserved per actor."""

    num_gpus: float = Field(default=0, ge=0)
    """GPUs per actor (fractions allow colocation)."""


class ClusterConfig(Section):
    """Ray cluster and placement of the rollout, learner and reward roles."""

    address: str | None = None
    """Ray address of an existing cluster (`auto`); None starts a local Ray."""

    num_cpus: int | None = Field(default=None, ge=1)
    """CPUs of the local Ray (None: all)."""

    object_store_gib: float = Field(default=1.0, gt=0)
    """Object store size of the local Ray."""

    dashboard: bool = False
    """Start the Ray dashboard (web UI on port 8265, metrics export) with the local Ray. False
    starts Ray 2.60's minimum: its API server process with the usage-stats module only, no metrics
    collection. Ray's DashboardAgent and RuntimeEnvAgent processes run either way (the raylet
    requires both). Ignored with `address` (the cluster's own settings apply)."""

    rollout: RoleResources = Field(default_factory=RoleResources)
    """Per rollout engine."""

    learner: RoleResources = Field(default_factory=RoleResources)
    """Per learner rank."""

    reward: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.5))
    """Per reward worker."""

    reward_workers: int = Field(default=1, ge=1)
    """Reward worker actors."""
