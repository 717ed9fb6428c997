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

    rollout: RoleResources = Field(default_factory=RoleResources)
    """Per rollout engine."""

    learner: RoleResources = Field(default_factory=RoleResources)
    """Per learner rank."""

    reward: RoleResources = Field(default_factory=lambda: RoleResources(num_cpus=0.5))
    """Per reward worker."""

    reward_workers: int = Field(default=1, ge=1)
    """Reward worker actors."""
