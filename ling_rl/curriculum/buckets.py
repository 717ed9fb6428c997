"""Difficulty buckets of Evo-CoT's length reward: the one lookup shared by
the curriculum's stage alpha tables and the `length` reward's `alpha_buckets` rows.

Reward workers import this module (through rewards/length.py): it must stay free of torch, ray and
pydantic, so it imports only the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_ALPHA: dict[str, float] = {"0.8": 1.0, "0.5": 0.5, "0.2": 0.2, "0.0": 0.1}
"""The default table, lower pass-rate edge -> alpha: > 0.8 -> 1.0, > 0.5 -> 0.5, > 0.2 -> 0.2, else 0.1."""


def bucket_index(rate: float, edges: Sequence[float]) -> int:
    """Index in `edges` of `rate`'s bucket: the largest edge strictly below `rate`.

    A rate at or below every edge (NaN included) falls in the lowest edge's bucket. Edges may be in
    any order and must be distinct. With the default edges, 0.8 is in bucket 0.5 and 0.81 in 0.8.
    """
    if not edges:
        raise ValueError("no bucket edges")
    repeated = sorted({e for e in edges if list(edges).count(e) > 1})
    if repeated:
        raise ValueError(f"bucket edge {repeated[0]} is given twice")
    below = [i for i, edge in enumerate(edges) if rate > edge]
    if not below:
        return min(range(len(edges)), key=lambda i: edges[i])
    return max(below, key=lambda i: edges[i])
