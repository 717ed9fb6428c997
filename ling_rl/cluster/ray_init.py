"""Starting (or joining) Ray from the recipe's `cluster:` section.

    from ling_rl.cluster.ray_init import init_ray
    init_ray(recipe.cluster)                    # local Ray, or the cluster at cluster.address
    init_ray(recipe.cluster, temp_dir="/tmp/r") # tests: a short temp dir (socket paths <= 107 bytes)

A local Ray comes with a watchdog (`ling_rl.cluster.reaper`) that kills every process of the run
when this process dies, SIGKILL included. With `cluster.address` nothing of the cluster is killed:
the run's actors are owned by this driver and Ray ends them when the driver's job ends.
"""

from __future__ import annotations

import os
import subprocess

from ling_rl import run_logs
from ling_rl.cluster.config import ClusterConfig
from ling_rl.cluster.reaper import start_reaper


def init_ray(cluster_cfg: ClusterConfig, temp_dir: str | None = None) -> None:
    """Start a local Ray sized by `cluster_cfg`, or connect to `cluster_cfg.address`.

    Does nothing when Ray is already initialized in this process (tests share one session-wide
    Ray; the driver may have connected itself), so every role can call it.
    """
    import ray  # deferred: `ling-rl --help` and config checks must not pay for importing Ray

    if ray.is_initialized():
        return
    # A driver that routes the run's output (`ling_rl.run_logs.route`, the quiet console) keeps
    # Ray's own messages in its log file and the actors' output in theirs.
    quiet = not run_logs.forward_role_output()
    run_logs.ray_driver_to_file()
    output = {"log_to_driver": not quiet, "configure_logging": not quiet}
    if cluster_cfg.address is not None:
        ray.init(address=cluster_cfg.address, **output)
        return
    # A local, single-user Ray: token authentication only gets in the way here.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=cluster_cfg.num_cpus,
        # Without this Ray reserves ~30% of RAM in /dev/shm for objects we never need that big.
        object_store_memory=int(cluster_cfg.object_store_gib * 2**30),
        include_dashboard=cluster_cfg.dashboard,
        # Metrics collection makes the dashboard agent export node stats; only the dashboard shows them.
        _system_config=None if cluster_cfg.dashboard else {"enable_metrics_collection": False},
        _temp_dir=temp_dir,
        **output,
    )
    global _reaper
    if _reaper is None:  # one per driver: it watches the whole tree, a later local Ray included
        _reaper = start_reaper()


_reaper: subprocess.Popen | None = None
"""The watchdog of the local Ray this process started (its stdin pipe must stay open while we live)."""
