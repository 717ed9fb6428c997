"""ling-rl: post-training RL for Ling 2.0 Mixture-of-Experts models."""

import os as _os

__version__ = "0.1.0"

# A local Ray started by ling-rl must listen on 127.0.0.1 only (ling_rl/cluster/ray_init.py). Ray
# reads this variable once, when it is first imported, so it is set here, before any module of the
# package can import Ray; joining a cluster (`cluster.address`) is unaffected. A user's own value wins.
_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
