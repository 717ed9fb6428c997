"""Starting (or joining) Ray from the recipe's `cluster:` section.

    from ling_rl.cluster.ray_init import init_ray
    init_ray(recipe.cluster)                    # local Ray, or the cluster at cluster.address
    init_ray(recipe.cluster, temp_dir="/tmp/r") # tests: a short temp dir (socket paths <= 107 bytes)

A local Ray listens on the loopback interface only (127.0.0.1: its GCS, raylet, workers and
agents) and keeps Ray's token authentication (Ray 2.60 turns it on for a new local cluster: the
token is `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`, which
Ray writes if it is missing). A run that joins `cluster.address` follows the cluster's settings
(`RAY_AUTH_MODE` and the token as the cluster was started with, docs/ray-cluster.md).

A local Ray comes with a watchdog (`ling_rl.cluster.reaper`) that kills every process of the run
when this process dies, SIGKILL included, then removes the files registered with
`remove_after_driver`. With `cluster.address` nothing of the cluster is killed: the run's actors
are owned by this driver and Ray ends them when the driver's job ends.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ling_rl import run_logs
from ling_rl.cluster import reaper
from ling_rl.cluster.config import ClusterConfig

LOOPBACK = "127.0.0.1"

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray reads this variable when it is imported; at "0" a new local Ray takes 127.0.0.1 as its
node's address (Ray's own default on Windows and macOS), and Ray's gRPC servers then bind to
127.0.0.1 instead of every interface. The package sets it when it is imported
(`ling_rl/__init__.py`), before any of its modules imports Ray (`init_ray` refuses a local start
otherwise), and the Ray workers inherit it. Joining a cluster is unaffected: Ray 2.60 finds the driver's node by
its host, not by this address (checked: a driver with it joined a `ray start --head` at the
machine's own address)."""



def init_ray(cluster_cfg: ClusterConfig, temp_dir: str | None = None) -> None:
    """Start a local Ray sized by `cluster_cfg`, or connect to `cluster_cfg.address`.

    Does nothing when Ray is already initialized in this process (tests share one session-wide
    Ray; the driver may have connected itself), so every role can call it. Raises RuntimeError
    rather than start a local Ray that would listen on every interface (Ray imported before this
    package set `LOCAL_ONLY_ENV`, or the variable set otherwise).
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
    # The address a new local Ray would take (what `ray.init` asks the same function).
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:
        raise RuntimeError(f"a local Ray here would listen on {address} (every interface), not on {LOOPBACK} only: "
                           f"{LOCAL_ONLY_ENV} is {os.environ.get(LOCAL_ONLY_ENV)!r} or Ray was imported before "
                           f"ling_rl (its __init__) set it to 0; set {LOCAL_ONLY_ENV}=0 in the environment, or "
                           "import ling_rl before ray")
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
    _keep_token_private()
    global _reaper
    if _reaper is None:  # one per driver: it watches the whole tree, a later local Ray included
        _reaper = reaper.start_reaper()


def _keep_token_private() -> None:
    """Ray 2.60 writes the token of a new local cluster to `~/.ray/auth_token` with the default
    mode (0644 under a usual umask): another user of the machine could read it and, since the
    servers accept any local connection that presents it, run code as this user. Readable by its
    owner only (a token Ray did not write, set by RAY_AUTH_TOKEN[_PATH], is the user's business)."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file() and token.stat().st_uid == os.getuid() and token.stat().st_mode & 0o077:
        token.chmod(0o600)


def remove_after_driver(folder: str, pattern: str) -> bool:
    """Have the watchdog of this driver's local Ray remove the files in `folder` whose names match
    `pattern` (a regular expression, in full) once this process is gone, however it ends. False
    when there is no watchdog (a run on `cluster.address`, or Ray started by someone else)."""
    if _reaper is None or _reaper.poll() is not None:
        return False
    reaper.remove_after_driver(_reaper, folder, pattern)
    return True


_reaper: subprocess.Popen | None = None
"""The watchdog of the local Ray this process started (its stdin pipe must stay open while we live)."""
