"""Splitting a rank's rows into micro-batches by token budget.

Every FSDP2 rank must run the same number of forward/backward passes (each one all-gathers
parameters), so the plan is made from the whole batch, identically on every rank.
"""

from __future__ import annotations

import torch


def shard_rows(batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Rows of `rank` under a strided split (balanced across ranks for any batch size)."""
    return torch.arange(rank, batch_size, world_size)


def plan_micro_batches(lengths: torch.Tensor, world_size: int, token_budget: int) -> list[list[torch.Tensor]]:
    """For each rank, a list of row-index tensors (into the full batch), one per micro-batch, the
    same count on every rank. A micro-batch holds rows while rows * longest row <= token_budget
    (at least one row); ranks with fewer micro-batches get empty ones."""
    per_rank: list[list[torch.Tensor]] = []
    for rank in range(world_size):
        rows = shard_rows(len(lengths), rank, world_size)
        chunks: list[list[int]] = [[]]
        longest = 0
        for r in rows.tolist():
            n = int(lengths[r])
            if chunks[-1] and max(longest, n) * (len(chunks[-1]) + 1) > token_budget:
                chunks.append([])
                longest = 0
            chunks[-1].append(r)
            longest = max(longest, n)
        per_rank.append([torch.tensor(c, dtype=torch.long) for c in chunks if c])
    count = max(1, max(len(c) for c in per_rank))
    return [c + [torch.empty(0, dtype=torch.long)] * (count - len(c)) for c in per_rank]
