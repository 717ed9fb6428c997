"""Weight sync time vs a plain copy of the same bytes.

The sync path of ling-rl on one node: the learner's full state dict -> Hugging Face names without
MTP (`inference_weights`) -> one safetensors file under /dev/shm (`write_safetensors_atomic`) ->
the vLLM engine reloads it (`WeightReloadExtension.reload_from_safetensors` through
`collective_rpc`, which streams the file tensor by tensor and re-runs the CPU backend's weight
repacking). The baseline is one in-memory copy of the same number of bytes (`Tensor.copy_`),
the least any sync must do. Median of `--repeats`.

    .venv/bin/python bench/weight_sync.py [--presets tiny small] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_preset(preset: str, repeats: int) -> dict[str, float]:
    import torch

    from ling_rl.models.hf_io import inference_weights, load_model, write_safetensors_atomic
    from ling_rl.models.tiny import init_tiny
    from ling_rl.rollout.vllm_engine import build_llm
    from ling_rl.rollout.weight_sync import EXTENSION_CLS

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        folder = init_tiny(Path(tmp) / preset, preset=preset, seed=0)
        model = load_model(folder)
        cfg = model.config
        path = Path(shm) / "weights.safetensors"
        llm = build_llm(folder, dtype="float32", seed=0, max_model_len=512, worker_extension_cls=EXTENSION_CLS)

        def export() -> None:
            write_safetensors_atomic(inference_weights(model.state_dict(), cfg), path)

        def reload() -> None:
            llm.collective_rpc("reload_from_safetensors", args=(str(path),))

        export_s = _median_time(export, repeats)
        reload_s = _median_time(reload, repeats)
        nbytes = sum(t.numel() * t.element_size() for t in inference_weights(model.state_dict(), cfg).values())
        src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
        dst = torch.empty_like(src)
        copy_s = _median_time(lambda: dst.copy_(src), repeats)
        del llm
    return {"bytes": nbytes, "export_s": export_s, "reload_s": reload_s, "copy_s": copy_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    rows = [(p, bench_preset(p, args.repeats)) for p in args.presets]
    print(f"{'preset':7s} {'MB':>7s} {'export s':>9s} {'reload s':>9s} {'sync s':>8s} {'copy s':>8s} {'sync/copy':>10s} {'sync GB/s':>10s}")
    for p, r in rows:
        sync = r["export_s"] + r["reload_s"]
        print(f"{p:7s} {r['bytes'] / 1e6:7.1f} {r['export_s']:9.4f} {r['reload_s']:9.4f} {sync:8.4f} {r['copy_s']:8.5f} "
              f"{sync / r['copy_s']:9.0f}x {r['bytes'] / sync / 1e9:10.2f}")


if __name__ == "__main__":
    main()
