"""Splitting a batch's rows into micro-batches per rank by token budget.

Every FSDP2 rank must run the same number of forward/backward passes (each one all-gathers
parameters), so the plan is made from the whole batch, identically on every rank.

Two plans, the same update (losses are normalised by the whole batch, whichever rank and
micro-batch a row lands in):
- strided (default): rank r takes rows r, r + N, ..., in order, cut into micro-batches while
  they fit the budget; ranks that need fewer micro-batches get empty ones;
- balanced (`learner.balance_ranks`): rows longest first, each to the least-loaded of
  N x M micro-batches that it fits (M, per rank, as small as the budget allows; one more when a
  row fits none), rank r taking micro-batches r*M .. r*M + M-1: equal counts, near-equal tokens.

A micro-batch's cost is what its forward computes: rows x longest row when padded, the sum of
the rows' lengths when packed (`learner.packing`).
"""

from __future__ import annotations

import torch


def shard_rows(batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Rows of `rank` under a strided split (balanced across ranks for any batch size)."""
    return torch.arange(rank, batch_size, world_size)


def micro_batch_cost(lengths: list[int], packed: bool) -> int:
    """Positions a micro-batch of rows with `lengths` computes."""
    if not lengths:
        return 0
    return sum(lengths) if packed else len(lengths) * max(lengths)


def plan_micro_batches(lengths: torch.Tensor, world_size: int, token_budget: int, packed: bool = False,
                       balanced: bool = False) -> list[list[torch.Tensor]]:
    """For each rank, a list of row-index tensors (into the full batch), one per micro-batch, the
    same count on every rank. A micro-batch holds rows while its cost fits `token_budget` (at least
    one row); a micro-batch may be empty."""
    sizes = [int(n) for n in lengths.tolist()]
    plan = _balanced(sizes, world_size, token_budget, packed) if balanced else \
        _strided(sizes, world_size, token_budget, packed)
    count = max(1, max(len(c) for c in plan))
    return [[torch.tensor(c, dtype=torch.long) for c in chunks] + [torch.empty(0, dtype=torch.long)] * (count - len(chunks))
            for chunks in plan]


def _strided(sizes: list[int], world_size: int, budget: int, packed: bool) -> list[list[list[int]]]:
    per_rank = []
    for rank in range(world_size):
        chunks: list[list[int]] = [[]]
        for r in shard_rows(len(sizes), rank, world_size).tolist():
            if chunks[-1] and micro_batch_cost([sizes[i] for i in chunks[-1]] + [sizes[r]], packed) > budget:
                chunks.append([])
            chunks[-1].append(r)
        per_rank.append([c for c in chunks if c])
    return per_rank


def _balanced(sizes: list[int], world_size: int, budget: int, packed: bool) -> list[list[list[int]]]:
    order = sorted(range(len(sizes)), key=lambda r: (-sizes[r], r))  # longest first; ties by index
    # The fewest micro-batches per rank that the total could fit in; grown until every row fits.
    per_rank = max(1, -(-sum(sizes) // (budget * world_size)))
    while True:
        bins = _fill(order, sizes, world_size * per_rank, budget, packed)
        if bins is not None:
            # Rows in batch order within a micro-batch (deterministic, like the strided plan).
            return [[sorted(b) for b in bins[rank * per_rank : (rank + 1) * per_rank]] for rank in range(world_size)]
        per_rank += 1


def _fill(order: list[int], sizes: list[int], n_bins: int, budget: int, packed: bool) -> list[list[int]] | None:
    """Rows of `order` each into the least-loaded bin it fits (an empty bin takes any row); None
    when a row fits no bin. Ties go to the lowest bin index, so the plan is the same on every rank."""
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    total, longest = [0] * n_bins, [0] * n_bins

    def cost(i: int, extra: int = 0) -> int:  # micro_batch_cost of bin i with a row of `extra` tokens added
        if packed:
            return total[i] + extra
        return (len(bins[i]) + (extra > 0)) * max(longest[i], extra)

    for r in order:
        n = sizes[r]
        fits = [i for i in range(n_bins) if not bins[i] or cost(i, n) <= budget]
        if not fits:
            return None
        best = min(fits, key=lambda i: (cost(i), i))
        bins[best].append(r)
        total[best] += n
        longest[best] = max(longest[best], n)
    return bins
