"""Where a vLLM-CPU weight reload goes: the engine's `reload_from_safetensors` (what every sync
ends with) timed and profiled in this process against a plain in-memory copy of the same bytes.

Builds a vLLM engine on a tiny/small preset model (in-process: `VLLM_CPU_OMP_THREADS_BIND=nobind`,
1 thread), writes its inference weights to one safetensors file under /dev/shm, reloads it
`--repeats` times (after 2 warm-up reloads), and prints the median and spread, the plain `clone`
of the same tensors, and cProfile's top entries of one more reload, grouped by what they are.

    .venv/bin/python bench/reload_profile.py [--preset small] [--repeats 5]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

# vLLM reads these at import: one in-process engine with one unbound thread, as in the rollout actor.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("OMP_NUM_THREADS", "1")

GROUPS = {  # cProfile function (file:name substring) -> what it is
    "routed_experts.py:load_weights": "vLLM expert weight loaders (one call per expert tensor)",
    "layerwise.py:_layerwise_process": "of which: vLLM's per-layer post-processing, run from the loaders (CPU: oneDNN re-layout of linears)",
    "utils.py:_load_param": "vLLM loaders of the other parameters",
    "weight_sync.py:_stream_safetensors": "reading the safetensors file",
    "cpu_platform.py:after_reload": "ling-rl's CPU expert repacking (vLLM-CPU workaround)",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=("tiny", "small"), default="small")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from safetensors.torch import save_file

    from ling_rl.models.hf_io import inference_weights, load_model
    from ling_rl.models.tiny import init_tiny
    from ling_rl.rollout.vllm_engine import build_llm
    from ling_rl.weightsync.extension import EXTENSION_CLS

    model_dir = init_tiny(Path(tempfile.mkdtemp()) / "model", preset=args.preset)
    model = load_model(model_dir)
    weights = {k: v.contiguous() for k, v in inference_weights(model.state_dict(), model.config).items()}
    path = f"/dev/shm/ling-rl-reload-profile-{os.getpid()}.safetensors"
    save_file(weights, path)
    llm = build_llm(model_dir, worker_extension_cls=EXTENSION_CLS)
    try:
        def reload() -> None:
            llm.collective_rpc("reload_from_safetensors", args=([path],))

        for _ in range(2):
            reload()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            reload()
            times.append(time.perf_counter() - t)
        copies = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            [v.clone() for v in weights.values()]
            copies.append(time.perf_counter() - t)
        profile = cProfile.Profile()
        profile.enable()
        reload()
        profile.disable()
    finally:
        Path(path).unlink(missing_ok=True)
    mib = sum(t.numel() * t.element_size() for t in weights.values()) / 2**20
    reload_ms, copy_ms = statistics.median(times) * 1e3, statistics.median(copies) * 1e3
    print(f"{args.preset} preset: {len(weights)} tensors, {mib:.2f} MiB fp32, load average {os.getloadavg()[0]:.2f}")
    print(f"reload {reload_ms:.1f} ms (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}); "
          f"plain clone {copy_ms:.2f} ms; reload / copy {reload_ms / copy_ms:.1f}x")
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = max(ct for (_, _, _, ct, _) in stats.values())
    print(f"one profiled reload: {total * 1e3:.1f} ms (cProfile adds overhead); cumulative time of (nested where said):")
    for key, what in GROUPS.items():
        file_part, name = key.split(":")
        cum = sum(ct for (f, _, fn), (_, _, _, ct, _) in stats.items() if f.endswith(file_part) and fn == name)
        print(f"  {cum * 1e3:7.1f} ms  {what}")


if __name__ == "__main__":
    main()
