"""Learner step throughput and memory: fp32 vs bf16 vs fp8 on the learner's own build path
(`apply_fp8`, then FSDP2 `fully_shard` per layer with the bf16 mixed-precision policy).

    .venv/bin/python bench/learner.py                       # CPU: tiny and small presets
    python bench/learner.py --device cuda --shapes ling-mini --layers 3   # GPU (bf16 vs fp8, MFU)

Each (shapes, precision) runs in a fresh subprocess so that peak memory (RSS on CPU, CUDA max
allocated on GPU) is its own. One step: forward, token cross-entropy on all positions, backward,
AdamW step; the time is the median of `--steps` steps after 2 warm-up steps.

On CPU, fp8 is *emulated* by torchao (real casts and scales, GEMMs in high precision): its numbers
show the wiring and the overhead of the casts, never an fp8 speed-up; and bf16 is slower than
fp32 on CPUs without AVX512-bf16. MFU is reported on CUDA only, against the dense bf16 peak of
the device (`--peak-tflops`, default 989 for H100 SXM).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# Ling-mini-2.0 (16B total, 1.4B active): per-layer shapes; `--layers` keeps the first few.
LING_MINI = dict(
    vocab_size=157184, hidden_size=2048, intermediate_size=5120, num_attention_heads=16, num_key_value_heads=4,
    head_dim=128, moe_intermediate_size=512, num_experts=256, num_experts_per_tok=8, num_shared_experts=1,
    first_k_dense_replace=1, n_group=8, topk_group=4, routed_scaling_factor=2.5, partial_rotary_factor=0.5,
    num_nextn_predict_layers=0,
)


def model_config(shapes: str, layers: int):
    from ling_rl.models.ling_config import LingConfig
    from ling_rl.models.tiny import PRESETS

    if shapes == "ling-mini":
        return LingConfig(num_hidden_layers=layers, max_position_embeddings=32768, **LING_MINI)
    return replace(PRESETS[shapes], num_nextn_predict_layers=0)


def step_flops(cfg, tokens: int, seq: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward): 2 per multiply-add of
    every active weight (attention, dense/shared MLP, top-k experts, lm_head) plus causal attention."""
    h, hd = cfg.hidden_size, cfg.head_dim
    attn_w = h * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd + cfg.num_attention_heads * hd * h
    shared = cfg.shared_intermediate_size if cfg.num_shared_experts else 0
    per_layer = []
    for i in range(cfg.num_hidden_layers):
        mlp = 3 * h * cfg.intermediate_size if not cfg.is_moe_layer(i) else \
            3 * h * (cfg.num_experts_per_tok * cfg.moe_intermediate_size + shared) + h * cfg.num_experts
        per_layer.append(attn_w + mlp)
    weights = sum(per_layer) + h * cfg.vocab_size
    attention = cfg.num_hidden_layers * 2 * cfg.num_attention_heads * hd * seq  # QK^T and PV, causal half of 2x2
    return 3 * 2 * tokens * (weights + attention)


def run_one(shapes: str, precision: str, layers: int, batch: int, seq: int, steps: int, device: str) -> dict:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from ling_rl.learner.config import FP8Config
    from ling_rl.learner.fp8 import apply_fp8
    from ling_rl.models.ling_moe import LingForCausalLM

    torch.manual_seed(0)
    backend = "nccl" if device == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{tmp}/pg", rank=0, world_size=1)
    cfg = model_config(shapes, layers)
    with torch.device(device):
        model = LingForCausalLM(cfg)
    model.init_weights()
    converted = apply_fp8(model, FP8Config()) if precision == "fp8" else []
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision in ("bf16", "fp8") else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model(ids).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    out = {"shapes": shapes, "precision": precision, "layers": cfg.num_hidden_layers, "tokens": batch * seq,
           "step_s": step, "tokens_per_s": batch * seq / step, "fp8_modules": len(converted), "loss": float(loss)}
    if device == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["tflops"] = step_flops(cfg, batch * seq, seq) / step / 1e12
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    dist.destroy_process_group()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shapes", nargs="*", default=None, help="tiny, small, ling-mini")
    parser.add_argument("--precisions", nargs="*", default=None)
    parser.add_argument("--layers", type=int, default=3, help="layers of the ling-mini shapes")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(**json.loads(args.child))))
        return
    gpu = args.device == "cuda"
    shapes = args.shapes or (["ling-mini"] if gpu else ["tiny", "small"])
    precisions = args.precisions or (["bf16", "fp8"] if gpu else ["fp32", "bf16", "fp8"])
    batch, seq = args.batch or (4 if gpu else 8), args.seq or (4096 if gpu else 128)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    results = []
    for shape in shapes:
        for precision in precisions:
            child = dict(shapes=shape, precision=precision, layers=args.layers, batch=batch, seq=seq,
                         steps=args.steps, device=args.device)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(child)], env=env,
                                  capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if proc.returncode:
                raise SystemExit(f"{shape}/{precision} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    mem = "peak_mem_gib" if gpu else "peak_rss_gib"
    print(f"device {args.device}, batch {batch} x seq {seq}{' (fp8 emulated: wiring only)' if not gpu else ''}")
    print(f"{'shapes':10s} {'prec':5s} {'fp8 mods':>8s} {'s/step':>8s} {'tok/s':>9s} {mem:>13s}" + ("  TFLOP/s   MFU" if gpu else ""))
    base = {r["shapes"]: r for r in results if r["precision"] == ("bf16" if gpu else "fp32")}
    for r in results:
        line = f"{r['shapes']:10s} {r['precision']:5s} {r['fp8_modules']:8d} {r['step_s']:8.3f} {r['tokens_per_s']:9.0f} {r[mem]:13.2f}"
        if gpu:
            line += f"  {r['tflops']:7.1f} {r['tflops'] / args.peak_tflops:5.1%}"
        ref = base.get(r["shapes"])
        if ref is not None and ref is not r:
            line += f"   {ref['step_s'] / r['step_s']:.2f}x vs {ref['precision']}"
        print(line)


if __name__ == "__main__":
    main()
