"""The one difficulty-bucket lookup, shared by the curriculum (alpha tables) and the `length`
reward (`alpha_buckets` rows): the edge cases both former copies handled."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from ling_rl.curriculum.buckets import DEFAULT_ALPHA, bucket_index

EDGES = [0.8, 0.5, 0.2, 0.0]


@pytest.mark.parametrize(("rate", "edge"), [
    (1.0, 0.8), (0.81, 0.8),  # above the top edge
    (0.8, 0.5), (0.51, 0.5), (0.5, 0.2), (0.21, 0.2), (0.2, 0.0),  # an edge is a strict lower bound
    (0.01, 0.0), (0.0, 0.0),  # the lowest edge takes every other rate, its own value included
    (-0.5, 0.0), (math.nan, 0.0),  # ... even below it, and NaN (compares false with every edge)
])
def test_rate_falls_in_the_largest_edge_strictly_below_it(rate: float, edge: float) -> None:
    assert EDGES[bucket_index(rate, EDGES)] == edge


def test_order_of_edges_does_not_matter_and_the_lowest_edge_need_not_be_zero() -> None:
    assert bucket_index(0.6, [0.2, 0.8, 0.5]) == 2
    assert bucket_index(0.9, [0.2, 0.8, 0.5]) == 1
    assert bucket_index(0.1, [0.8, 0.2]) == 1  # below every edge: the lowest one's bucket
    assert bucket_index(0.3, [0.5]) == 0


@pytest.mark.parametrize(("edges", "needle"), [([], "no bucket edges"), ([0.5, 0.2, 0.5], "0.5 is given twice")])
def test_empty_or_repeated_edges_are_refused(edges: list[float], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        bucket_index(0.3, edges)


def test_default_table_is_algorithms_md() -> None:
    assert DEFAULT_ALPHA == {"0.8": 1.0, "0.5": 0.5, "0.2": 0.2, "0.0": 0.1}


def test_imports_nothing_a_reward_worker_must_not_load() -> None:
    code = ("import sys, ling_rl.curriculum.buckets; "
            "print(sorted(m for m in ('torch', 'ray', 'pydantic') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
