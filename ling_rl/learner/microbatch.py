"""Splitting a batch's rows into micro-batches per rank by token budget.

Every FSDP2 rank must run the same number of forward/backward passes (each one all-gathers
parameters), so the plan is made from the whole batch, identically on every rank.

Two plans, the same update (losses are normalised by the whole batch, whichever rank and
micro-batch a row lands in):
- strided (`learner.balance_ranks: false`): rank r takes rows r, r + N, ..., in order, cut into
  micro-batches while they fit the budget; ranks that need fewer micro-batches get empty ones;
- balanced (`learner.balance_ranks`, the default): rows longest first, each to the least-loaded of
  N x M micro-batches that it fits (M, per rank, the smallest for which every row fits, found by
  bisection), rank r taking micro-batches r*M .. r*M + M-1: equal counts, near-equal tokens.

A micro-batch's cost is what its forward computes: rows x longest row when padded, the sum of
the rows' lengths when packed (`learner.packing`).
"""

from __future__ import annotations

import heapq

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
    # M, micro-batches per rank: bisected between what the total could fit in and one row per
    # micro-batch (always feasible: every row gets an empty micro-batch of its own).
    lo = max(1, -(-sum(sizes) // (budget * world_size)))
    hi = max(lo, -(-len(sizes) // world_size))
    bins = _fill(order, sizes, world_size * hi, budget, packed)
    while lo < hi:
        mid = (lo + hi) // 2
        tried = _fill(order, sizes, world_size * mid, budget, packed)
        if tried is None:
            lo = mid + 1
        else:
            hi, bins = mid, tried
    assert bins is not None
    # Rows in batch order within a micro-batch (deterministic, like the strided plan).
    return [[sorted(b) for b in bins[rank * hi : (rank + 1) * hi]] for rank in range(world_size)]


def _fill(order: list[int], sizes: list[int], n_bins: int, budget: int, packed: bool) -> list[list[int]] | None:
    """Rows of `order` (longest first) each into the least-loaded bin it fits (an empty bin takes
    any row); None when a row fits no bin. Ties go to the lowest bin index, so the plan is the same
    on every rank. A heap of (cost, bin): packed, the least-loaded bin is the one to try (if it
    cannot take the row, none can); padded, a bin's cost with one more row is (rows + 1) x its
    longest, whatever the (shorter) row: a bin that cannot take one row can never take another,
    and leaves the heap."""
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    total, longest = [0] * n_bins, [0] * n_bins
    heap = [(0, i) for i in range(n_bins)]
    for r in order:
        n = sizes[r]
        while True:
            if not heap:
                return None
            _, i = heapq.heappop(heap)
            grown = total[i] + n if packed else (len(bins[i]) + 1) * max(longest[i], n)
            if not bins[i] or grown <= budget:
                break
            if packed:
                return None
        bins[i].append(r)
        total[i] += n
        longest[i] = max(longest[i], n)
        heapq.heappush(heap, (total[i] if packed else len(bins[i]) * longest[i], i))  # micro_batch_cost
    return bins
