"""Micro-batches balanced across ranks by tokens (`learner.balance_ranks`, issue 25 part 2): the
plan's properties, and on 2 gloo FSDP2 ranks the same loss and gradients as the strided plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.driver.session import learner_sections
from ling_rl.learner.microbatch import micro_batch_cost, plan_micro_batches
from ling_rl.learner.worker import LearnerWorker
from ling_rl.types import TrainBatch
from tests.learner.helpers import leave

# A wide spread, as RL responses have: a few long rows among many short ones.
SPREAD = torch.tensor([60, 4, 5, 58, 7, 3, 9, 40, 6, 5, 12, 4, 33, 8, 5, 7])


def _check_plan(plan: list[list[torch.Tensor]], lengths: torch.Tensor, budget: int, packed: bool) -> None:
    rows = sorted(r for chunks in plan for c in chunks for r in c.tolist())
    assert rows == list(range(len(lengths))), "every row exactly once"
    assert len({len(chunks) for chunks in plan}) == 1, "the same number of micro-batches on every rank"
    for chunks in plan:
        for c in chunks:
            sizes = lengths[c].tolist()
            assert len(sizes) <= 1 or micro_batch_cost(sizes, packed) <= budget


def _rank_cost(plan: list[list[torch.Tensor]], lengths: torch.Tensor, packed: bool) -> list[int]:
    return [sum(micro_batch_cost(lengths[c].tolist(), packed) for c in chunks) for chunks in plan]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_balanced_plan_covers_rows_fits_budget_and_evens_ranks(packed: bool, world: int) -> None:
    budget = 128
    strided = plan_micro_batches(SPREAD, world, budget, packed=packed)
    balanced = plan_micro_batches(SPREAD, world, budget, packed=packed, balanced=True)
    _check_plan(strided, SPREAD, budget, packed)
    _check_plan(balanced, SPREAD, budget, packed)
    assert len(balanced[0]) <= len(strided[0]), "no more forward passes than the strided plan"
    # The slowest rank sets the step time: balancing never makes it slower here, and with several
    # ranks it is faster on this spread.
    worst_strided, worst_balanced = max(_rank_cost(strided, SPREAD, packed)), max(_rank_cost(balanced, SPREAD, packed))
    assert worst_balanced <= worst_strided
    if world > 1:
        assert worst_balanced < worst_strided


def test_balanced_plan_edge_cases() -> None:
    one_long = torch.tensor([500, 3, 4])  # a row over the budget gets a micro-batch of its own
    plan = plan_micro_batches(one_long, 2, 64, packed=True, balanced=True)
    _check_plan(plan, one_long, 64, True)
    assert any(c.tolist() == [0] for c in plan[0] + plan[1])
    few = plan_micro_batches(torch.tensor([5]), 2, 64, packed=True, balanced=True)  # fewer rows than ranks
    assert [[c.tolist() for c in chunks] for chunks in few] == [[[0]], [[]]]
    same = plan_micro_batches(SPREAD, 2, 128, packed=True, balanced=True)
    assert [[c.tolist() for c in ch] for ch in same] == \
        [[c.tolist() for c in ch] for ch in plan_micro_batches(SPREAD, 2, 128, packed=True, balanced=True)]


def _batch() -> TrainBatch:
    """Prompts of 4 tokens and responses of `SPREAD`'s lengths."""
    g = torch.Generator().manual_seed(3)
    t = 4 + int(SPREAD.max())
    position = torch.arange(t)[None, :]
    real = position < (4 + SPREAD)[:, None]
    mask = real & (position >= 4)
    return TrainBatch(input_ids=torch.randint(10, 1024, (len(SPREAD), t), generator=g) * real, response_mask=mask,
                      advantages=torch.randn(len(SPREAD), 1, generator=g) * mask,
                      unit_ids=(torch.cumsum(mask.int(), 1) - 1).clamp(min=0) // 3 * mask,
                      inf_logprobs=-3.0 * mask)


# Each plan spelled out: the defaults (packed, balanced) are one of the layouts compared here.
PLANS = {"strided": {"balance_ranks": False, "packing": False}, "balanced": {"balance_ranks": True, "packing": False},
         "balanced_packed": {"balance_ranks": True, "packing": True}}


def _two_ranks(rank: int, world: int, init: str, model_dir: str, out: str) -> None:
    class Recording(LearnerWorker):
        def _optimizer_step(self, optimizer: torch.optim.Optimizer) -> float:
            # full_tensor is a collective: every rank gathers, in the same order
            self.grads = {n: p.grad.full_tensor().clone() for n, p in self.model.named_parameters() if p.grad is not None}
            return super()._optimizer_step(optimizer)

    results = {}
    for name, learner in PLANS.items():
        sections = learner_sections(parse_recipe({
            "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
            "algorithm": {"mismatch": {"type": "none"}},
            "learner": {"precision": "fp32", "lr": 1e-3, "micro_batch_tokens": 128, "num_ranks": world, **learner},
        }))
        worker = Recording(rank, world, sections, model_dir)
        worker.setup(init)
        shapes: list[tuple[int, ...]] = []  # rank 0's forward inputs, one per micro-batch
        worker.model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
        metrics = worker.train_step(_batch())
        results[name] = {"metrics": metrics, "grads": worker.grads, "shapes": shapes}
    if rank == 0:
        torch.save(results, out)
    leave(worker)


def test_balanced_ranks_train_as_strided_on_two_ranks(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "balance.pt"
    mp.spawn(_two_ranks, args=(2, f"file://{tmp_path}/pg", str(tiny_dir), str(out)), nprocs=2)
    results = torch.load(out)
    # Each plan really ran: rank 0's forwards are its micro-batches under that plan.
    lengths = 4 + SPREAD
    for name, learner in PLANS.items():
        packed = learner["packing"]
        plan = plan_micro_batches(lengths, 2, 128, packed=packed, balanced=learner["balance_ranks"])[0]
        expected = [(1, int(lengths[c].sum())) if packed else (len(c), int(lengths[c].max())) for c in plan]
        assert results[name]["shapes"] == expected, name
    assert results["strided"]["shapes"] != results["balanced"]["shapes"]
    base = results["strided"]
    for name in ("balanced", "balanced_packed"):
        got = results[name]
        for key in ("loss", "pg_loss", "grad_norm"):
            assert got["metrics"][key] == pytest.approx(base["metrics"][key], rel=1e-6, abs=1e-9), (name, key)
        largest = max(float(g.abs().max()) for g in base["grads"].values())
        for param, g in base["grads"].items():
            err = float((got["grads"][param] - g).abs().max())
            assert err <= 1e-6 * largest, f"{name}: gradient of {param} differs by {err:.3g}"
    assert base["metrics"]["loss"] != 0 and base["metrics"]["grad_norm"] > 0
