"""Building small TrainBatches from the tiny model for learner tests."""

from __future__ import annotations

import torch

from ling_rl.types import TrainBatch


def random_batch(vocab: int, rows: int = 6, prompt_len: int = 5, max_resp: int = 12, seed: int = 0) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_resp + 1, (rows,), generator=g)
    t = prompt_len + max_resp
    ids = torch.zeros(rows, t, dtype=torch.long)
    mask = torch.zeros(rows, t, dtype=torch.bool)
    for r in range(rows):
        n = prompt_len + int(lengths[r])
        ids[r, :n] = torch.randint(10, vocab, (n,), generator=g)
        mask[r, prompt_len:n] = True
    rewards = torch.randn(rows, generator=g)
    adv = (rewards[:, None] * mask).float()
    units = (torch.cumsum(mask.int(), 1) - 1).clamp(min=0) // 3 * mask
    inf = (torch.randn(rows, t, generator=g) * 0.01 - 3.0) * mask
    return TrainBatch(input_ids=ids, response_mask=mask, advantages=adv, unit_ids=units.long(), inf_logprobs=inf)


def leave(worker) -> None:
    """End a spawned learner rank. Ranks meet at a barrier, then the process exits at once:
    tearing down gloo at interpreter exit sometimes aborts the process ("terminate called without
    an active exception") after all its work is done, which would fail the test for nothing."""
    import os

    import torch.distributed as dist

    dist.barrier()
    os._exit(0)
