"""Weight sync paths on CPU (issue 11): time per phase vs a plain in-memory copy of the same bytes.

One vLLM engine as a Ray actor (`RolloutGroup`, as in training) on a tiny-model preset; the
learner side runs in this process on the unsharded model (`InProcessLearner`: the same
layer-by-layer gather and bucketing a learner rank 0 runs). For each method, `WeightSync.sync`
reports its phases (ling_rl/weightsync/methods.py):

    shm_file      gather | write bucket files to /dev/shm       | engine reloads them
    object_store  gather | ray.put buckets + engine ray.get and  | engine reloads them
                         | writes them to its node's /dev/shm    |

The methods run interleaved (shm, object, shm, object, ...) for `--repeats` rounds, so a change
in the machine's load hits both alike; the table gives the median and the [min, max] spread. The
baseline is one `Tensor.copy_` of the same number of bytes (median of at least 20, after one
untimed copy), the least any sync must do. The
NCCL method needs CUDA and is not measured here.

    .venv/bin/python bench/weight_sync.py [--presets tiny small] [--repeats 5] [--bucket-mib 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

METHODS = ("shm_file", "object_store")
PHASES = ("gather", "transfer", "load", "total")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def bench_preset(preset: str, repeats: int, bucket_mib: int, cluster) -> dict:
    import torch

    from ling_rl.models.hf_io import inference_weights, load_model
    from ling_rl.models.tiny import init_tiny
    from ling_rl.rollout.config import RolloutConfig
    from ling_rl.rollout.group import RolloutGroup
    from ling_rl.weightsync.methods import SYNC_METHODS
    from ling_rl.weightsync.sender import InProcessLearner

    with tempfile.TemporaryDirectory() as tmp:
        folder = init_tiny(Path(tmp) / preset, preset=preset, seed=0)
        model = load_model(folder)
        nbytes = sum(t.numel() * t.element_size() for t in inference_weights(model.state_dict(), model.config).values())
        group = RolloutGroup(str(folder), RolloutConfig(num_engines=1), cluster, dtype="float32", max_model_len=512)
        try:
            learner = InProcessLearner(model)
            syncs = {m: SYNC_METHODS[m](learner, group, RolloutConfig(weight_sync={"method": m, "bucket_mib": bucket_mib}),
                                        "float32", f"bench-{os.getpid()}") for m in METHODS}
            times: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PHASES} for m in METHODS}
            for r in range(repeats):
                for m in METHODS:
                    started = time.perf_counter()
                    metrics = syncs[m].sync(version=r + 1)
                    times[m]["total"].append(time.perf_counter() - started)
                    for p in ("gather", "transfer", "load"):
                        times[m][p].append(metrics[f"sync/{p}_s"])
        finally:
            group.shutdown()
        src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
        dst = torch.empty_like(src)
        dst.copy_(src)  # touch the pages once: the baseline is a copy, not page faults
        copies = []
        for _ in range(max(repeats, 20)):  # a copy takes micro- to milliseconds: more repeats
            t0 = time.perf_counter()
            dst.copy_(src)
            copies.append(time.perf_counter() - t0)
    return {"bytes": nbytes, "copy": copies, "times": times}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket-mib", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from ling_rl.cluster.config import ClusterConfig, RoleResources
    from ling_rl.cluster.ray_init import init_ray

    cluster = ClusterConfig(num_cpus=2, object_store_gib=1.0, rollout=RoleResources(num_cpus=1))
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    init_ray(cluster, temp_dir=temp_dir)  # before `import ray`: it binds the local Ray to loopback
    import ray
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    try:
        rows = [(p, bench_preset(p, args.repeats, args.bucket_mib, cluster)) for p in args.presets]
    finally:
        ray.shutdown()
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"seconds: median [min, max] of {args.repeats} interleaved repeats; buckets of {args.bucket_mib} MiB")
    for preset, r in rows:
        copy = statistics.median(r["copy"])
        ms = [c * 1e3 for c in r["copy"]]
        print(f"\n{preset}: {r['bytes'] / 1e6:.1f} MB, plain copy {statistics.median(ms):.3f} ms [{min(ms):.3f}, {max(ms):.3f}]")
        print(f"{'method':13s} " + " ".join(f"{p + ' s':>30s}" for p in PHASES))
        for m, t in r["times"].items():
            print(f"{m:13s} " + " ".join(f"{_spread(t[p]):>30s}" for p in PHASES))
        print(f"{'/ copy':13s} " + " ".join(f"{p:>9s}" for p in PHASES) + "  (median phase time / median copy time)")
        for m, t in r["times"].items():
            print(f"{m:13s} " + " ".join(f"{statistics.median(t[p]) / copy:8.1f}x" for p in PHASES))


if __name__ == "__main__":
    main()
