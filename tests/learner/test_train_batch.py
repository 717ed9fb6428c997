"""TrainBatch's per-token fields come from one definition: selecting rows, trimming positions
(`LearnerWorker._trim`) and padding / moving (`batch_to`) reach every field, through
`TrainBatch.map_positions` and the fields' layout markers."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
import torch

from ling_rl.learner.device import batch_to
from ling_rl.learner.worker import LearnerWorker
from ling_rl.types import TrainBatch, _per_token
from tests.learner.helpers import random_batch

K = 2


def _full_batch() -> TrainBatch:
    """A batch with every optional field set, each holding its [B, T] position grid (distinct values)."""
    batch = random_batch(1024, rows=4, seed=0)
    b, t = batch.input_ids.shape
    batch.old_logprobs = torch.randn(b, t)
    batch.version_lag = torch.randint(0, 3, (b, t))
    batch.routed_experts = [torch.arange(b * t * K).view(b * t, K) + 1000 * layer for layer in range(2)]
    assert all(getattr(batch, f.name) is not None for f in fields(TrainBatch))
    return batch


def _grid(batch: TrainBatch, name: str) -> torch.Tensor:
    """The field as [B, T, ...] (routes stacked per layer as [layers, B, T, K])."""
    value = getattr(batch, name)
    if isinstance(value, list):
        b, t = batch.input_ids.shape
        return torch.stack([r.view(b, t, -1) for r in value])
    return value


def test_every_field_is_marked_per_token() -> None:
    assert {f.metadata.get("layout") for f in fields(TrainBatch)} <= {"positions", "routes"}
    assert all("layout" in f.metadata for f in fields(TrainBatch))


def test_select_trim_and_batch_to_reach_every_field() -> None:
    batch = _full_batch()
    rows = torch.tensor([2, 0])
    picked = batch.select(rows)
    trimmed = LearnerWorker._trim(picked)
    length = trimmed.input_ids.shape[1]
    assert length < batch.input_ids.shape[1]  # the rows' right padding was cut
    padded = batch_to(batch, torch.device("cpu"), multiple=8)
    extra = padded.input_ids.shape[1] - batch.input_ids.shape[1]
    assert extra > 0
    for f in fields(TrainBatch):
        full = _grid(batch, f.name)
        row_axis = 1 if f.metadata["layout"] == "routes" else 0
        expected = full.index_select(row_axis, rows)
        assert torch.equal(_grid(picked, f.name), expected), f.name
        assert torch.equal(_grid(trimmed, f.name), expected.narrow(row_axis + 1, 0, length)), f.name
        grown = _grid(padded, f.name)
        assert torch.equal(grown.narrow(row_axis + 1, 0, full.shape[row_axis + 1]), full), f.name
        assert not grown.narrow(row_axis + 1, full.shape[row_axis + 1], extra).any(), f.name  # zero padding


def test_a_field_without_a_layout_marker_is_an_error_naming_it() -> None:
    @dataclass
    class Extended(TrainBatch):
        weights: torch.Tensor | None = None  # declared without _per_token

    batch = random_batch(1024, rows=2, seed=0)
    extended = Extended(**{f.name: getattr(batch, f.name) for f in fields(TrainBatch)}, weights=torch.ones(2))
    with pytest.raises(TypeError, match=r"TrainBatch\.weights has no per-token layout marker"):
        extended.select(torch.tensor([0]))
    assert _per_token("positions").metadata["layout"] == "positions"
