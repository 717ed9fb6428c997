"""The `cluster:` section: where the roles run."""

from __future__ import annotations

from pydantic import Field, field_validator

from ling_rl.schema import Section

RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
"""Resources Ray defines itself; `resources:` takes only custom ones."""


class RoleResources(Section):
    """Resources of one actor of a role."""

    num_cpus: float = Field(default=1, ge=0)
    """CPUs reserved per actor."""

    num_gpus: float = Field(default=0, ge=0)
    """GPUs per actor (fractions allow colocation)."""

    threads: int | None = Field(default=None, ge=1)
    """torch/OpenMP threads of each actor (None: `num_cpus` rounded down, at least 1). `num_cpus`
    is Ray's reservation; threads are what the actor computes with. In the synchronous loop the
    rollout engines and the learner take turns (generate, then train), so on a small CPU box each
    can use every core while the other waits: e.g. 1 engine and 1 learner rank with `threads: 2`
    on 2 cores (bench/RESULTS.md). Oversubscribing roles that run at the same time (2
    learner ranks x 2 threads on 2 cores) slows them down."""

    @property
    def actor_threads(self) -> int:
        """The thread count each actor of this role runs with."""
        return self.threads if self.threads is not None else max(1, int(self.num_cpus))

    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per actor, which pin the role to the nodes that offer them: a node
    started with `ray start --resources='{"node_learner": 2}'` takes two actors asking
    `{node_learner: 1}` (e.g. the two learner ranks), and no other node takes them. Empty: any node
    with free CPUs/GPUs. Names are the cluster's own; CPU, GPU and memory go in `num_cpus`/`num_gpus`."""

    @field_validator("resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in RAY_BUILTIN_RESOURCES:
                raise ValueError(f"{name!r} is a built-in Ray resource: use num_cpus / num_gpus, not resources")
            if amount <= 0:
                raise ValueError(f"{name}: {amount:g} units; a resource amount must be > 0")
        return value


class ClusterConfig(Section):
    """Ray cluster and placement of the rollout, learner and reward roles."""

    address: str | None = None
    """Ray address of an existing cluster (`auto`); None starts a local Ray."""

    num_cpus: int | None = Field(default=None, ge=1)
    """CPUs of the local Ray (None: all)."""

    object_store_gib: float = Field(default=1.0, gt=0)
    """Object store size of the local Ray."""

    gpu_memory_gib: float | None = Field(default=None, gt=0)
    """Memory of one GPU, as the device reports it (GiB; an 80 GB H100 reports about 79.2), for the
    memory plan `ling-rl train` checks before starting. None: read from the GPUs themselves (this
    machine's for a local Ray; with `address`, one probe task per GPU node of the cluster)."""

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
