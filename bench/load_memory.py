"""Peak memory of a learner rank while loading the model: the old path (every rank loads the whole
fp32 model with `load_model`, then `fully_shard`) vs the sharded path (`build_sharded`: meta model,
`fully_shard`, `to_empty`, filled layer by layer from rank 0).

    .venv/bin/python bench/load_memory.py                           # CPU, 2 ranks (gloo), 3 runs each
    python bench/load_memory.py --device cuda --ranks 1 --configs small   # one GPU (NCCL)

Configs: the `small` preset (`init_tiny(..., preset="small")`, ~35 MB in fp32: the ~400 MB of a
process that imported torch dominate its RSS) and `wide`, a synthetic LingConfig of ~0.4 GB in
fp32 (written with `save_model`) so that the model dominates. Each run spawns fresh ranks; a rank
resets its RSS high-water mark (`/proc/self/clear_refs`) just before loading, and reports the
peak RSS during loading minus its RSS just before (the increase), and on CUDA the peak allocated
CUDA memory over what was allocated before. Before measuring, each rank loads the `tiny` preset
the same way (imports, first collectives, allocator set-up go into the baseline), and glibc's mmap
threshold is fixed at 1 MiB so that freed tensors leave the RSS. A run's number is the largest over its ranks; the table gives the median over
`--runs` runs. Goal (issue 11): peak <= 1.5 / ranks x the fp32 model + one layer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _load(path: str, model_dir: str, device: object) -> object:
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from ling_rl.learner.loading import build_sharded
    from ling_rl.models.hf_io import load_model

    mp = MixedPrecisionPolicy()
    if path == "sharded":
        return build_sharded(model_dir, device, mp)
    model = load_model(model_dir, dtype=torch.float32, device=device)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _rank(rank: int, world: int, init: str, path: str, model_dir: str, warmup_dir: str, device_name: str,
          out: str) -> None:
    import gc

    import torch
    import torch.distributed as dist

    from ling_rl.learner.device import BACKENDS, resolve_device

    torch.set_num_threads(1)
    device = resolve_device(device_name, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(BACKENDS[device.type], init_method=init, rank=rank, world_size=world)
    # Warm-up: the same path on the `tiny` preset first, so that imports, the process group's
    # first collectives and allocator set-up are in the baseline, not in the measured increase.
    warm = _load(path, warmup_dir, device)
    del warm
    gc.collect()
    dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on
    before = _rss_bytes("VmRSS")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    model = _load(path, model_dir, device)
    dist.barrier()
    result = {"rss_peak_increase": _rss_bytes("VmHWM") - before, "rss_before": before,
              "cuda_peak": torch.cuda.max_memory_allocated() - cuda_before if device.type == "cuda" else 0}
    del model
    Path(f"{out}.rank{rank}").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _write_model(kind: str, folder: Path) -> Path:
    from ling_rl.models.hf_io import save_model
    from ling_rl.models.tiny import PRESETS, build_tiny_model, init_tiny

    if kind == "small":
        return init_tiny(folder, preset="small", seed=0)
    # ~0.4 GB fp32: wider layers and more experts than `small`, so the model dominates the RSS.
    cfg = replace(PRESETS["small"], hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
                  moe_intermediate_size=256, num_experts=32, n_group=4, topk_group=2, num_attention_heads=8)
    return save_model(build_tiny_model(cfg, seed=0), folder)


def _sizes(model_dir: Path) -> tuple[int, int]:
    """(whole model, largest decoder layer) in fp32 bytes."""
    from ling_rl.models.hf_io import meta_model

    model = meta_model(model_dir)
    total = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * 4 for b in model.buffers())
    layer = max(sum(p.numel() * 4 for p in layer.parameters()) for layer in model.model.layers)
    return total, layer


def main() -> None:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--configs", nargs="+", default=["small", "wide"], choices=["small", "wide"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    # glibc raises its mmap threshold after large frees (up to 32 MB), after which freed tensors
    # stay in the heap and RSS; a fixed threshold makes every large tensor return to the OS when
    # freed, so the warm-up's memory does not hide in the baseline.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from ling_rl.models.tiny import init_tiny

        warmup_dir = init_tiny(Path(tmp) / "warmup", preset="tiny", seed=1)
        for kind in args.configs:
            model_dir = _write_model(kind, Path(tmp) / kind)
            total, layer = _sizes(model_dir)
            goal = 1.5 / args.ranks * total + layer
            for path in ("old", "sharded"):
                runs = []
                for i in range(args.runs):
                    out = Path(tmp) / f"{kind}-{path}-{i}"
                    mp.spawn(_rank, args=(args.ranks, f"file://{out}.pg", path, str(model_dir), str(warmup_dir), args.device,
                                                 str(out)),
                             nprocs=args.ranks)
                    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(args.ranks)]
                    runs.append({k: max(r[k] for r in ranks) for k in ranks[0]})
                row = {"config": kind, "path": path, "ranks": args.ranks, "device": args.device,
                       "model_fp32_mb": total / 1e6, "layer_fp32_mb": layer / 1e6, "goal_mb": goal / 1e6,
                       "rss_increase_mb": statistics.median(r["rss_peak_increase"] for r in runs) / 1e6,
                       "rss_increase_runs_mb": [round(r["rss_peak_increase"] / 1e6, 1) for r in runs],
                       "rss_before_mb": statistics.median(r["rss_before"] for r in runs) / 1e6,
                       "cuda_peak_mb": statistics.median(r["cuda_peak"] for r in runs) / 1e6}
                rows.append(row)
                print(f"{kind:6s} {path:8s} ranks={args.ranks} model={row['model_fp32_mb']:.1f} MB "
                      f"layer={row['layer_fp32_mb']:.1f} MB goal<={row['goal_mb']:.1f} MB | "
                      f"RSS before {row['rss_before_mb']:.0f} MB, peak increase {row['rss_increase_mb']:.1f} MB "
                      f"(runs {row['rss_increase_runs_mb']}) | CUDA peak {row['cuda_peak_mb']:.1f} MB", flush=True)
    print(f"loadavg: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
