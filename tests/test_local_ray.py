"""A local Ray started by `init_ray` listens on loopback only and keeps Ray's token authentication.

The Ray is started in a fresh interpreter, as `ling-rl train` starts it (the test session's own
Ray may be joined by processes of other tests), with a task and an actor so that worker
processes are listening too. Every listening TCP socket of its processes (the driver, GCS,
raylet, agents, workers: the driver's process tree) must be on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_DRIVER = """
import json, os, sys
import psutil
from ling_rl.cluster.config import ClusterConfig
from ling_rl.cluster.ray_init import init_ray
import ray

init_ray(ClusterConfig(num_cpus=1, object_store_gib=0.25), temp_dir=sys.argv[1])

@ray.remote(num_cpus=0)
class Actor:
    def pid(self):
        return os.getpid()

@ray.remote(num_cpus=0)
def task():
    return os.getpid()

actor = Actor.remote()
pids = ray.get([actor.pid.remote(), task.remote()])
me = psutil.Process()
listening = {}
for proc in [me, *me.children(recursive=True)]:
    try:
        addresses = [c.laddr.ip for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        name = proc.name()
    except psutil.Error:
        continue
    if addresses:
        listening[f"{proc.pid} {name}"] = addresses
gcs = [p for p in me.children(recursive=True) if p.name() == "gcs_server"]
print(json.dumps({"listening": listening, "workers": pids, "auth_mode": os.environ.get("RAY_AUTH_MODE"),
                  "gcs_auth_mode": gcs[0].environ().get("RAY_AUTH_MODE") if gcs else None,
                  "node_ip": ray.util.get_node_ip_address(),
                  "token_mode": oct(os.stat(os.path.expanduser("~/.ray/auth_token")).st_mode & 0o777)}))
ray.shutdown()
"""


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
                              and ip.ipv4_mapped.is_loopback)


def test_a_local_ray_listens_on_loopback_only_with_token_auth() -> None:
    with tempfile.TemporaryDirectory(prefix="raylo", dir="/tmp") as temp_dir:  # socket paths <= 107 bytes
        env = {k: v for k, v in __import__("os").environ.items()
               if k not in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}  # production's defaults
        env["HOME"] = temp_dir  # a home without a token: Ray writes a new one, which must be private
        proc = subprocess.run([sys.executable, "-c", _DRIVER, temp_dir], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    names = " ".join(out["listening"])
    assert "gcs_server" in names and "raylet" in names, out  # the processes were found
    worker_pids = {str(pid) for pid in out["workers"]}
    assert worker_pids <= {key.split()[0] for key in out["listening"]}, out  # the workers' servers too
    exposed = {key: [a for a in addresses if not _loopback(a)] for key, addresses in out["listening"].items()}
    assert not any(exposed.values()), exposed
    assert out["node_ip"] == "127.0.0.1"
    assert out["auth_mode"] == "token" and out["gcs_auth_mode"] == "token", out
    assert out["token_mode"] == "0o600", out  # Ray writes it 0644: no other user may read it
