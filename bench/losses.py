"""LPO vs ppo_token (and gspo) policy-loss time, forward + backward, on one realistic batch.

    python bench/losses.py [--batch 512] [--length 1024] [--repeats 15]

The same tensors go through `policy_loss` for each loss type, with the default icepop correction
and with none; unit ids are non-decreasing with a mean unit length of about 20 tokens (what the
segmenter gives on reasoning text), responses have ragged lengths. Prints the median time of each
and the LPO / ppo_token ratio (goal: <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ling_rl.algorithms import AlgorithmConfig, policy_loss
from ling_rl.algorithms.config import LossConfig, MismatchConfig


def make_batch(batch: int, length: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    old = -2.0 * torch.rand(batch, length, generator=gen)
    logp = (old + 0.05 * torch.randn(batch, length, generator=gen)).requires_grad_(True)
    inf = old + 0.05 * torch.randn(batch, length, generator=gen)
    adv = torch.randn(batch, generator=gen)
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=gen)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    cuts = torch.rand(batch, length, generator=gen) < 1 / 20
    units = torch.cumsum(cuts.long(), dim=1) - cuts[:, :1].long()
    return logp, old, adv, mask, units, inf


def time_losses(cfgs: dict[str, AlgorithmConfig], tensors, repeats: int) -> dict[str, float]:
    """Median seconds per forward+backward of each config; runs are interleaved round-robin so
    that load from other processes on the machine hits every loss type alike."""
    logp, old, adv, mask, units, inf = tensors
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    for i in range(repeats + 2):
        for name, cfg in cfgs.items():
            logp.grad = None
            start = time.perf_counter()
            loss, _ = policy_loss(logp, old, adv, units, mask, cfg, inf_logp=inf)
            loss.backward()
            elapsed = time.perf_counter() - start
            if i >= 2:  # warm-up runs allocate the buffers
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tensors = make_batch(args.batch, args.length)
    tokens = int(tensors[3].sum())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch} x {args.length} "
          f"({tokens} response tokens); median of {args.repeats} forward+backward runs")
    for mismatch in ("icepop", "none"):
        cfgs = {
            loss_type: AlgorithmConfig(loss=LossConfig(type=loss_type), mismatch=MismatchConfig(type=mismatch))
            for loss_type in ("ppo_token", "lpo", "gspo")
        }
        times = time_losses(cfgs, tensors, args.repeats)
        row = ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in times.items())
        print(f"mismatch={mismatch:6s}: {row}; lpo / ppo_token = {times['lpo'] / times['ppo_token']:.3f}")


if __name__ == "__main__":
    main()
