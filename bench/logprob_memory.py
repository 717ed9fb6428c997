"""Peak memory of the learner's log-prob pass with and without chunking (issue 11 item 3).

    .venv/bin/python bench/logprob_memory.py                       # CPU, vocab 157184, hidden 2048
    .venv/bin/python bench/logprob_memory.py --tokens 4096 --chunks 0,512 --sampling top_p
    python bench/logprob_memory.py --device cuda --dtype bfloat16 --tokens 8192   # GPU

One pass is what the learner does per micro-batch for the policy: log-probs of `--tokens` targets
from hidden states [tokens, hidden] and an lm_head weight [vocab, hidden] (both requiring grad),
then backward. Chunk 0 is the unchunked path (`token_logprobs` on the full logits, as before issue
11); any other value is `chunked_token_logprobs` with that many tokens per chunk. `--sampling
plain` is temperature 1 (a log-softmax), `top_p` is temperature 0.7 with top-p 0.95 (a sort of
every row). Each run is a fresh subprocess; its peak is the rise of the peak RSS (CPU,
`resource.getrusage`) or of CUDA max allocated memory over what the inputs already held, so the
weight gradient ([vocab, hidden], the same in both paths) is included. The CUDA path is written
for CUDA, not run on a GPU yet.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SAMPLINGS = {"plain": {}, "top_p": {"temperature": 0.7, "top_p": 0.95}}


def one(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from ling_rl.learner.logprobs import chunked_token_logprobs, token_logprobs

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    # Filled in place: a temporary here would raise the peak RSS that the pass is measured against.
    hidden = torch.empty(args.tokens, args.hidden, device=device, dtype=dtype).normal_(generator=g).requires_grad_(True)
    weight = torch.empty(args.vocab, args.hidden, device=device, dtype=dtype).normal_(0, 0.02, generator=g)
    weight.requires_grad_(True)
    targets = torch.randint(0, args.vocab, (args.tokens,), device=device, generator=g)
    sampling = SAMPLINGS[args.sampling]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    if args.one == 0:
        logp = token_logprobs(F.linear(hidden, weight), targets, **sampling)
    else:
        logp = chunked_token_logprobs(hidden, weight, targets, **sampling, chunk_tokens=args.one).logprobs
    logp.sum().backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"chunk": args.one, "sampling": args.sampling, "tokens": args.tokens, "vocab": args.vocab,
            "hidden": args.hidden, "dtype": args.dtype, "device": args.device,
            "peak_gib": (peak - base) / 2**30, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=157184)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--chunks", default="0,1024,256", help="comma-separated; 0 = unchunked")
    parser.add_argument("--sampling", choices=sorted(SAMPLINGS), default="plain")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args)))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"vocab {args.vocab}, hidden {args.hidden}, {args.tokens} tokens, {args.dtype} on {args.device}, "
          f"sampling {args.sampling}; logits of all tokens: {args.tokens * args.vocab * 4 / 2**30:.2f} GiB in fp32")
    print("| chunk tokens | peak memory of the pass (GiB) | seconds (forward + backward) |")
    print("|---|---|---|")
    for chunk in (int(c) for c in args.chunks.split(",")):
        cmd = [sys.executable, __file__, "--one", str(chunk)] + [
            f"--{k}={v}" for k, v in vars(args).items() if k not in ("one", "chunks")]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
        if out.returncode != 0:
            print(f"| {chunk or 'unchunked'} | failed: {out.stderr.strip().splitlines()[-1:]} | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {chunk or 'unchunked'} | {r['peak_gib']:.2f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
