"""`learner.compile` (issue 25 part 3): each trunk decoder layer `torch.compile`d (inductor) trains
as eager, on one FSDP2 gloo rank: the same metrics and gradients, fp32, within 1e-6.

A dense 1-layer model keeps the compile to seconds here: a MoE layer took ~90 s on this CPU box
(the per-expert loop reads counts on the host, which breaks the graph)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ling_rl.config import RecipeError, parse_recipe
from ling_rl.driver.session import learner_sections
from ling_rl.learner.worker import LearnerWorker
from ling_rl.models.hf_io import save_model
from ling_rl.models.tiny import TINY, build_tiny_model
from tests.learner.helpers import random_batch

DENSE = replace(TINY, num_hidden_layers=1, first_k_dense_replace=1, num_nextn_predict_layers=0)

pytestmark = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported() or shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile (inductor) needs dynamo support and a C++ compiler for CPU kernels")


def _recipe(**learner: object) -> dict:
    return {"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
            "algorithm": {"mismatch": {"type": "none"}},
            "learner": {"precision": "fp32", "lr": 1e-30, "micro_batch_tokens": 40, **learner}}


class RecordingWorker(LearnerWorker):
    def _optimizer_step(self, optimizer: torch.optim.Optimizer) -> float:
        self.grads = {n: p.grad.full_tensor().clone() for n, p in self.model.named_parameters() if p.grad is not None}
        return super()._optimizer_step(optimizer)


def test_compiled_layers_train_as_eager(tmp_path: Path) -> None:
    folder = save_model(build_tiny_model(DENSE, seed=0), tmp_path / "model")
    threads = torch.get_num_threads()
    init = f"file://{tmp_path}/pg"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        runs = {}
        for compiled in (False, True):
            # compile needs the padded layout (packing, the default, is refused with it)
            recipe = _recipe(compile=compiled, packing=False)
            worker = RecordingWorker(0, 1, learner_sections(parse_recipe(recipe)), str(folder), threads=threads)
            worker.setup(init)
            # two batches of other shapes (dynamic shapes); lr 1e-30 leaves the fp32 weights bit-identical
            # after the first step, so the second compares compile alone (AdamW would amplify last bits)
            runs[compiled] = [(worker.train_step(random_batch(1024, seed=s)), worker.grads) for s in (0, 1)]
            assert all(type(layer).__name__ == "FSDPDecoderLayer" for layer in worker.model.trunk_layers)
            assert all((layer._compiled_call_impl is not None) == compiled for layer in worker.model.trunk_layers)
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)
    for (m_eager, g_eager), (m_comp, g_comp) in zip(runs[False], runs[True], strict=True):
        assert m_eager["loss"] != 0
        for key in ("loss", "pg_loss", "grad_norm", "entropy"):
            assert m_comp[key] == pytest.approx(m_eager[key], rel=1e-6, abs=1e-9), key
        largest = max(float(g.abs().max()) for g in g_eager.values())
        for name, g in g_eager.items():
            assert float((g_comp[name] - g).abs().max()) <= 1e-6 * largest, name


def test_compile_with_packing_is_refused_naming_both_keys() -> None:
    """Packing is the default, so `compile: true` alone is refused, and the error says what to set."""
    for learner in ({"compile": True}, {"compile": True, "packing": True}):
        with pytest.raises(RecipeError, match=r"learner\.compile: true needs learner\.packing: false"):
            parse_recipe(_recipe(**learner))
    assert parse_recipe(_recipe(compile=True, packing=False)).learner.compile
