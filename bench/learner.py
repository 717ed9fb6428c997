"""Learner step throughput and memory: fp32 vs bf16 vs fp8 on the learner's own build path
(`apply_fp8`, then FSDP2 `fully_shard` per layer with the bf16 mixed-precision policy).

    .venv/bin/python bench/learner.py                       # CPU: tiny and small presets
    python bench/learner.py --device cuda --shapes ling-mini --layers 3   # GPU (bf16 vs fp8, MFU)

Each (shapes, precision) runs in a fresh subprocess so that peak memory (RSS on CPU, CUDA max
allocated on GPU) is its own; with `--repeats N` the precisions alternate (bf16, fp8, bf16, ...)
N times and the table gives the median step time and its spread (min-max over the repeats). One
step: forward, mean token log-prob loss on all positions, backward, AdamW step; a run's time is the
median of `--steps` steps after 2 warm-up steps. `--head chunked` (default) computes the log-probs
as the learner does (`chunked_token_logprobs`, 1024 positions at a time); `--head full` builds the
whole [tokens, vocab] logits and a cross-entropy (what the 2026-11-26 H200 numbers in
bench/RESULTS.md used). `--json PATH` writes every run and the summary. Precisions: fp32, bf16,
fp8 (routed experts too where `learner.fp8.routed_experts: auto` allows it, sm90+; its
`fp8_modules` count includes them), fp8-linears (experts stay bf16). The CUDA path ran on an H200
in bf16 (bench/gpu_check.sh); fp8 did not finish a step there within the time limit.

`--layouts padded packed` measures the learner's own step instead (`LearnerWorker.train_step`,
`--ranks` gloo/NCCL ranks, the policy loss, the micro-batch plan): `padded` is the strided plan of
right-padded micro-batches (the learner's layout before packing became the default), `packed` the
padding-free packed micro-batches balanced across ranks by tokens (`learner.packing` +
`learner.balance_ranks`, the defaults; `packed-strided` and `padded-balanced` separate the two;
`compiled` is `padded` with `learner.compile`). The batches' (prompt, response) lengths are, with
`--lengths FILE`, those of a real run's responses: a generations file of `ling-rl eval`
(`prompt_tokens`, `response_tokens` of its sampled responses, taken `--rows` at a time in file
order, so a batch holds whole groups as the RL batch does); else a synthetic reasoning-like spread
(`spread_lengths`: a quarter of the responses at the budget, the rest long-tailed and short).
tokens/s counts real tokens (prompt + response), the same for every layout. Runs alternate between
the layouts, `--repeats` times, and each prints the load average before and after it
(`os.getloadavg`).

    .venv/bin/python bench/learner.py --layouts padded packed --shapes small --ranks 2 --repeats 3
    .venv/bin/ling-rl eval DFT_EXPORT --recipe recipes/quickstart.yaml --data data/reasoning/train.jsonl \
        --samples 8 --max-prompts 64 --out gens.jsonl      # the quickstart's first RL batches' lengths
    .venv/bin/python bench/learner.py --layouts padded packed --shapes small --ranks 2 --rows 64 --lengths gens.jsonl

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


def fp8_config(precision: str):
    """The FP8 settings of a bench precision, None when it is not an fp8 one. `fp8`: the recipe
    default (routed experts in fp8 where supported: CUDA sm90 with torchao's grouped GEMM);
    `fp8-linears`: only the attention / dense / shared-expert linears."""
    from ling_rl.learner.config import FP8Config

    return {"fp8": FP8Config(), "fp8-linears": FP8Config(routed_experts=False)}.get(precision)


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


def log(message: str) -> None:
    """Progress on stderr, flushed: a child killed at its time limit still shows how far it got."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


LAYOUTS: dict[str, dict[str, bool]] = {
    "padded": {"packing": False, "balance_ranks": False},
    "packed": {"packing": True, "balance_ranks": True},
    "packed-strided": {"packing": True, "balance_ranks": False},
    "padded-balanced": {"packing": False, "balance_ranks": True},
    "compiled": {"packing": False, "balance_ranks": False, "compile": True},  # torch.compile per layer (padded)
}
"""`--layouts`: learner settings of each micro-batch layout (`padded` is the learner's default)."""


def spread_lengths(rows: int, prompt: int, response: int, seed: int) -> list[tuple[int, int]]:
    """(prompt, response) lengths with a reasoning-like spread: prompts uniform in
    [prompt/4, prompt]; a quarter of the responses hit the budget `response` (truncated), the
    rest log-normal with a median of a fifth of it, at least 4 tokens."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        p = rng.randint(max(1, prompt // 4), prompt)
        r = response if rng.random() < 0.25 else int(min(response, max(4, rng.lognormvariate(0, 0.8) * response / 5)))
        out.append((p, r))
    return out


def file_lengths(path: str | Path, rows: int, batches: int) -> list[list[tuple[int, int]]]:
    """`batches` batches of `rows` (prompt, response) lengths from a `ling-rl eval` generations
    file's sampled responses to `eval.data`'s prompts (not an `eval.extra_data` set's), in file
    order (wrapping around when the file has fewer)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    pairs = [(r["prompt_tokens"], r["response_tokens"]) for r in records
             if r.get("mode") == "sampled" and r.get("eval_set") is None]
    if len(pairs) < rows:
        raise SystemExit(f"--lengths {path}: {len(pairs)} sampled responses with prompt_tokens/response_tokens, "
                         f"fewer than --rows {rows} (write it with `ling-rl eval ... --samples N`)")
    return [[pairs[(b * rows + k) % len(pairs)] for k in range(rows)] for b in range(batches)]


def step_lengths(spec: dict, step: int) -> list[tuple[int, int]]:
    """The (prompt, response) lengths of step `step` (warm-up steps included) of a layout run."""
    if spec.get("lengths"):
        return [tuple(pair) for pair in spec["lengths"][step]]
    return spread_lengths(spec["rows"], spec["prompt"], spec["response"], seed=step)


def spread_batch(lengths: list[tuple[int, int]], vocab: int, seed: int):
    """A right-padded TrainBatch with these (prompt, response) lengths, random tokens and advantages."""
    import torch

    from ling_rl.types import TrainBatch

    g = torch.Generator().manual_seed(seed)
    t = max(p + r for p, r in lengths)
    position = torch.arange(t)[None, :]
    prompts = torch.tensor([p for p, _ in lengths])[:, None]
    ends = torch.tensor([p + r for p, r in lengths])[:, None]
    mask = (position >= prompts) & (position < ends)
    ids = torch.randint(10, vocab, (len(lengths), t), generator=g) * (position < ends)
    return TrainBatch(input_ids=ids, response_mask=mask, advantages=torch.randn(len(lengths), 1, generator=g) * mask,
                      unit_ids=(torch.cumsum(mask.int(), 1) - 1).clamp(min=0) // 16 * mask,
                      inf_logprobs=-3.0 * mask)


def _layout_rank(rank: int, world: int, init: str, model_dir: str, out: str, spec: dict) -> None:
    """One learner rank of `run_layout`: setup, 2 warm-up steps, `steps` timed ones (rank 0 writes them)."""
    import torch
    import torch.distributed as dist

    from ling_rl.config import parse_recipe
    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker

    sections = learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "algorithm": {"mismatch": {"type": "none"}},
        "learner": {"precision": spec["precision"], "lr": 1e-6, "micro_batch_tokens": spec["micro_batch_tokens"],
                    "num_ranks": world, "device": spec["device"], **LAYOUTS[spec["layout"]]},
    }))
    worker = LearnerWorker(rank, world, sections, model_dir, threads=spec["threads"])
    worker.setup(init)
    times = []
    for i in range(spec["steps"] + 2):
        batch = spread_batch(step_lengths(spec, i), spec["vocab"], i)
        if spec["device"] == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        worker.train_step(batch)
        if spec["device"] == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        if i >= 2:
            times.append(time.perf_counter() - t0)
        if rank == 0:
            log(f"{spec['layout']}: step {i} {time.perf_counter() - t0:.3f} s{' (warm-up)' if i < 2 else ''}")
    if rank == 0:
        peak = torch.cuda.max_memory_allocated() / 2**30 if spec["device"] == "cuda" else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        Path(out).write_text(json.dumps({"times": times, "peak_gib": peak}))
    worker.shutdown()


def save_bench_model(shapes: str, layers: int, folder: Path) -> Path:
    """A randomly initialised model of `shapes` written as a Hugging Face folder (once per comparison)."""
    import torch

    from ling_rl.models.hf_io import save_model
    from ling_rl.models.ling_moe import LingForCausalLM

    torch.manual_seed(0)
    model = LingForCausalLM(model_config(shapes, layers))
    model.init_weights()
    return save_model(model, folder)


def run_layout(layout: str, shapes: str, layers: int, ranks: int, rows: int, prompt: int, response: int, steps: int,
               device: str, precision: str, micro_batch_tokens: int, model_dir: str,
               lengths: list[list[list[int]]] | None = None) -> dict:
    """Learner steps of one micro-batch layout on `ranks` ranks (spawned processes, one GPU each on CUDA)."""
    import torch
    import torch.multiprocessing as mp

    from ling_rl.learner.microbatch import micro_batch_cost, plan_micro_batches

    cfg = model_config(shapes, layers)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(layout=layout, precision=precision, micro_batch_tokens=micro_batch_tokens, device=device,
                    steps=steps, rows=rows, prompt=prompt, response=response, vocab=cfg.vocab_size, lengths=lengths,
                    threads=max(1, int(os.environ.get("OMP_NUM_THREADS", "2")) // ranks))
        out = Path(tmp) / "out.json"
        mp.spawn(_layout_rank, args=(ranks, f"file://{tmp}/pg", model_dir, str(out), spec), nprocs=ranks)
        result = json.loads(out.read_text())
    step = statistics.median(result["times"])
    batches = [step_lengths(spec, i) for i in range(2, steps + 2)]
    tokens = statistics.mean(sum(p + r for p, r in b) for b in batches)
    settings = LAYOUTS[layout]
    computed = statistics.mean(  # positions the forwards compute, padding included, over all ranks
        sum(micro_batch_cost([p + r for p, r in (b[i] for i in mb.tolist())], settings["packing"])
            for per_rank in plan_micro_batches(torch.tensor([p + r for p, r in b]), ranks, micro_batch_tokens,
                                               packed=settings["packing"], balanced=settings["balance_ranks"])
            for mb in per_rank) for b in batches)
    res = {"layout": layout, "shapes": shapes, "precision": precision, "ranks": ranks, "layers": cfg.num_hidden_layers,
           "rows": rows, "tokens": tokens, "computed_positions": computed, "step_s": step,
           "tokens_per_s": tokens / step, "times": result["times"], "load_before": load, "load_after": os.getloadavg(),
           "peak_gib": result["peak_gib"]}
    if device == "cuda":
        res["tflops"] = step_flops(cfg, int(tokens), int(tokens / rows)) / step / 1e12
    return res


def run_one(shapes: str, precision: str, layers: int, batch: int, seq: int, steps: int, device: str,
            head: str = "chunked") -> dict:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from ling_rl.learner.fp8 import apply_fp8
    from ling_rl.learner.logprobs import chunked_token_logprobs
    from ling_rl.models.ling_moe import LingForCausalLM

    torch.manual_seed(0)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)  # NCCL binds the rank to the current device
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{tmp}/pg", rank=0, world_size=1)
    cfg = model_config(shapes, layers)
    with torch.device(device):
        model = LingForCausalLM(cfg)
    model.init_weights()
    log(f"{precision}: model built ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters)")
    fp8 = fp8_config(precision)
    converted = apply_fp8(model, fp8, torch.device(device)) if fp8 is not None else []
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision != "fp32" else MixedPrecisionPolicy()
    log(f"{precision}: {len(converted)} modules converted to float8")
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    log(f"{precision}: sharded, optimizer built")
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if head == "chunked":  # the learner's path: log-probs 1024 positions at a time, no full logits
            out = model(ids, head=lambda h, w, depth: chunked_token_logprobs(h[:, :-1], w, ids[:, 1:], chunk_tokens=1024))
            loss = -out.head.logprobs.mean()
        else:  # the whole [tokens, vocab] logits and a fused cross-entropy
            logits = model(ids).logits
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        log(f"{precision}: step {i} {time.perf_counter() - t0:.3f} s{' (warm-up)' if i < 2 else ''}")
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    out = {"shapes": shapes, "precision": precision, "head": head, "layers": cfg.num_hidden_layers, "tokens": batch * seq,
           "step_s": step, "tokens_per_s": batch * seq / step, "fp8_modules": len(converted),
           "fp8_experts": sum(n.endswith("mlp.experts") for n in converted), "loss": float(loss)}
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
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per (shapes, precision)")
    parser.add_argument("--head", choices=["chunked", "full"], default="chunked",
                        help="log-probs as the learner computes them (chunked) or from the full logits")
    parser.add_argument("--child-timeout", type=float, default=None,
                        help="seconds per (shapes, precision) run; one over it is reported and not repeated")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--json", default=None, help="write the runs and the summary here")
    parser.add_argument("--layouts", nargs="*", default=None, choices=list(LAYOUTS),
                        help="compare micro-batch layouts on the learner's own step instead of precisions")
    parser.add_argument("--ranks", type=int, default=2, help="learner ranks (--layouts)")
    parser.add_argument("--rows", type=int, default=32, help="rows per batch (--layouts)")
    parser.add_argument("--prompt", type=int, default=64, help="longest prompt (--layouts)")
    parser.add_argument("--response", type=int, default=256, help="response budget (--layouts)")
    parser.add_argument("--micro-batch-tokens", type=int, default=2048, help="learner.micro_batch_tokens (--layouts)")
    parser.add_argument("--lengths", default=None,
                        help="a `ling-rl eval` generations file whose sampled responses give the batches' lengths (--layouts)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-layout", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_layout:
        print(json.dumps(run_layout(**json.loads(args.child_layout))))
        return
    if args.layouts:
        compare_layouts(args)
        return
    if args.child:
        if args.child_timeout:  # a run that hangs shows where: every thread's stack, before the kill
            import faulthandler

            faulthandler.dump_traceback_later(max(1.0, args.child_timeout - 10), exit=False)
        print(json.dumps(run_one(**json.loads(args.child))))
        return
    gpu = args.device == "cuda"
    shapes = args.shapes or (["ling-mini"] if gpu else ["tiny", "small"])
    precisions = args.precisions or (["bf16", "fp8"] if gpu else ["fp32", "bf16", "fp8"])
    # 2 x 4096 tokens: the [tokens, 157k] fp32 logits and their gradient stay ~10 GiB.
    batch, seq = args.batch or (2 if gpu else 8), args.seq or (4096 if gpu else 128)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    runs, failures = [], []
    for shape in shapes:
        for r in range(args.repeats):
            for precision in precisions:
                if f"{shape}/{precision}" in failures:  # failed or timed out once: spend the time elsewhere
                    continue
                child = dict(shapes=shape, precision=precision, layers=args.layers, batch=batch, seq=seq,
                             steps=args.steps, device=args.device, head=args.head)
                try:
                    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(child),
                                           *(["--child-timeout", str(args.child_timeout)] if args.child_timeout else [])], env=env,
                                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                                          timeout=args.child_timeout)
                except subprocess.TimeoutExpired as e:
                    err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
                    print(f"{shape}/{precision} repeat {r}: over --child-timeout {args.child_timeout:g} s; its "
                          f"progress:\n{err[-3000:]}", flush=True)
                    failures.append(f"{shape}/{precision}")
                    continue
                if proc.returncode:
                    print(f"{shape}/{precision} repeat {r} failed:\n{proc.stderr[-3000:]}", flush=True)
                    failures.append(f"{shape}/{precision}")
                    continue
                print(proc.stderr[-1500:], end="", flush=True)  # the child's progress lines
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"  {shape}/{precision} repeat {r}: {runs[-1]['step_s']:.3f} s/step", flush=True)
                if args.json:  # after every run: a timeout later still leaves the runs so far
                    write_json(args.json, args.device, batch, seq, runs, failures, gpu, args.peak_tflops)
    summary = summarize(runs, gpu, args.peak_tflops)
    print_table(summary, gpu, batch, seq, args.device)
    if args.json:
        write_json(args.json, args.device, batch, seq, runs, failures, gpu, args.peak_tflops)
    if failures:
        raise SystemExit(f"failed runs: {failures}")


def compare_layouts(args: argparse.Namespace) -> None:
    """`--layouts`: each layout in a fresh subprocess, alternating, `--repeats` times; the median
    step per layout, tokens/s, and the speed-up against the first layout."""
    gpu = args.device == "cuda"
    shapes = (args.shapes or (["ling-mini"] if gpu else ["small"]))[0]
    precision = (args.precisions or ["bf16" if gpu else "fp32"])[0]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    lengths = file_lengths(args.lengths, args.rows, args.steps + 2) if args.lengths else None
    where = (f"lengths of {args.lengths}" if lengths else
             f"synthetic spread, prompts <= {args.prompt}, responses <= {args.response}")
    print(f"layouts {args.layouts}: {shapes} ({precision}), {args.ranks} ranks, {args.rows} rows, {where}, "
          f"micro_batch_tokens {args.micro_batch_tokens}, {args.steps} steps, {args.repeats} repeats; "
          f"load average before: {os.getloadavg()}", flush=True)
    runs = []
    tmp = tempfile.TemporaryDirectory()
    model_dir = str(save_bench_model(shapes, args.layers, Path(tmp.name) / "model"))
    for r in range(args.repeats):
        for layout in args.layouts:
            child = dict(layout=layout, shapes=shapes, layers=args.layers, ranks=args.ranks, rows=args.rows,
                         prompt=args.prompt, response=args.response, steps=args.steps, device=args.device,
                         precision=precision, micro_batch_tokens=args.micro_batch_tokens, model_dir=model_dir,
                         lengths=lengths)
            try:
                proc = subprocess.run([sys.executable, __file__, "--child-layout", json.dumps(child)], env=env,
                                      capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                                      timeout=args.child_timeout)
            except subprocess.TimeoutExpired as e:
                err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
                raise SystemExit(f"{layout} repeat {r}: over --child-timeout {args.child_timeout:g} s; its "
                                 f"progress:\n{err[-3000:]}") from None
            if proc.returncode:
                raise SystemExit(f"{layout} repeat {r} failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            run = runs[-1]
            print(f"  {layout:16s} repeat {r}: {run['step_s']:.3f} s/step, {run['tokens_per_s']:.0f} tok/s, "
                  f"computed {run['computed_positions']:.0f} positions for {run['tokens']:.0f} tokens; load "
                  f"{run['load_before'][0]:.2f} -> {run['load_after'][0]:.2f}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"runs": runs}, indent=1))
    rows = []
    for layout in args.layouts:
        group = [r for r in runs if r["layout"] == layout]
        step = statistics.median(r["step_s"] for r in group)
        rows.append({"layout": layout, "step_s": step, "min": min(r["step_s"] for r in group),
                     "max": max(r["step_s"] for r in group), "tokens_per_s": group[0]["tokens"] / step,
                     "computed": group[0]["computed_positions"], "tokens": group[0]["tokens"],
                     **({"mfu": statistics.median(r["tflops"] for r in group) / args.peak_tflops} if gpu else {})})
    loads = [x for r in runs for x in (r["load_before"][0], r["load_after"][0])]
    print(f"{'layout':16s} {'s/step':>8s} {'min-max':>13s} {'tok/s':>8s} {'computed/real':>13s}"
          + ("   MFU" if gpu else "") + "  speed-up")
    for row in rows:
        print(f"{row['layout']:16s} {row['step_s']:8.3f} {row['min']:6.3f}-{row['max']:6.3f} {row['tokens_per_s']:8.0f} "
              f"{row['computed'] / row['tokens']:13.2f}" + (f" {row['mfu']:5.1%}" if gpu else "")
              + f"  {rows[0]['step_s'] / row['step_s']:.2f}x vs {rows[0]['layout']}")
    print(f"1-minute load average during the runs: {min(loads):.2f} - {max(loads):.2f}"
          + (" (>= 1.0: a loaded box, ratios not for RESULTS)" if max(loads) >= 1.0 else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": rows, "load": [min(loads), max(loads)]}, indent=1))
    tmp.cleanup()


def write_json(path: str, device: str, batch: int, seq: int, runs: list[dict], failures: list[str], gpu: bool,
               peak_tflops: float) -> None:
    Path(path).write_text(json.dumps({"device": device, "batch": batch, "seq": seq, "runs": runs,
                                      "summary": summarize(runs, gpu, peak_tflops), "failures": failures}, indent=1))


def summarize(runs: list[dict], gpu: bool, peak_tflops: float) -> list[dict]:
    """Per (shapes, precision): median step time over the repeats, its min-max spread, and the
    speed-up against the first precision of the same shapes (by default bf16 on GPU, fp32 on CPU)."""
    rows = []
    for key in dict.fromkeys((r["shapes"], r["precision"]) for r in runs):
        group = [r for r in runs if (r["shapes"], r["precision"]) == key]
        step = statistics.median(r["step_s"] for r in group)
        mem = "peak_mem_gib" if gpu else "peak_rss_gib"
        row = {"shapes": key[0], "precision": key[1], "repeats": len(group), "step_s": step,
               "step_s_min": min(r["step_s"] for r in group), "step_s_max": max(r["step_s"] for r in group),
               "tokens_per_s": group[0]["tokens"] / step, "fp8_modules": group[0]["fp8_modules"],
               "fp8_experts": group[0].get("fp8_experts", 0), mem: max(r[mem] for r in group),
               "loss": group[0]["loss"]}
        if gpu:
            row["tflops"] = statistics.median(r["tflops"] for r in group)
            row["mfu"] = row["tflops"] / peak_tflops
        rows.append(row)
    base: dict[str, dict] = {}
    for row in rows:  # the first precision run of each shapes is the baseline (bf16 on GPU, fp32 on CPU)
        base.setdefault(row["shapes"], row)
    for row in rows:
        ref = base.get(row["shapes"])
        if ref is not None and ref is not row:
            row["speedup_vs"] = ref["precision"]
            row["speedup"] = ref["step_s"] / row["step_s"]
    return rows


def print_table(rows: list[dict], gpu: bool, batch: int, seq: int, device: str) -> None:
    mem = "peak_mem_gib" if gpu else "peak_rss_gib"
    print(f"device {device}, batch {batch} x seq {seq}{' (fp8 emulated: wiring only)' if not gpu else ''}")
    print(f"{'shapes':10s} {'prec':5s} {'fp8 mods':>8s} {'s/step':>8s} {'min-max':>13s} {'tok/s':>9s} {mem:>13s}"
          + ("  TFLOP/s   MFU" if gpu else ""))
    for r in rows:
        line = (f"{r['shapes']:10s} {r['precision']:5s} {r['fp8_modules']:8d} {r['step_s']:8.3f} "
                f"{r['step_s_min']:6.3f}-{r['step_s_max']:6.3f} {r['tokens_per_s']:9.0f} {r[mem]:13.2f}")
        if gpu:
            line += f"  {r['tflops']:7.1f} {r['mfu']:5.1%}"
        if "speedup" in r:
            line += f"   {r['speedup']:.2f}x vs {r['speedup_vs']}"
        print(line)


if __name__ == "__main__":
    main()
