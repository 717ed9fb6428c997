"""The learner's routers compute in fp32 under bf16 mixed precision (issue 22 item 5): vLLM
routes with fp32 router weights and the sync ships them in fp32, so the learner must not route
with weights FSDP2 rounded to bf16."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ling_rl.config import parse_recipe
from ling_rl.driver.session import learner_sections
from tests.learner.helpers import leave, random_batch


def _probe(rank: int, world: int, init: str, model_dir: str, out: str) -> None:
    from torch.distributed.tensor import DTensor

    from ling_rl.learner.worker import LearnerWorker

    sections = learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "bf16", "lr": 1e-3, "micro_batch_tokens": 40, "num_ranks": world},
        "algorithm": {"mismatch": {"type": "none"}},
    }))
    worker = LearnerWorker(rank, world, sections, model_dir)
    worker.setup(init)
    seen: list[dict] = []
    routes: list[tuple[torch.Tensor, torch.Tensor]] = []

    def in_gate(module, args):  # runs after FSDP2's own pre-forward hook: the weight as the forward uses it
        seen.append({"weight": module.weight.dtype, "bias": module.expert_bias.dtype,
                     "sharded": isinstance(module.weight, DTensor), "input": args[0].dtype})

    def after_moe(module, args, output):  # the experts chosen, against fp32 master weights by hand
        master = module.gate.weight.full_tensor() if isinstance(module.gate.weight, DTensor) else module.gate.weight
        h = args[0].reshape(-1, args[0].shape[-1])
        expected = module.gate.select(F.linear(h.float(), master.float()).sigmoid())
        routes.append((output[1].sort(-1).values, expected.sort(-1).values))

    for layer in worker.model.trunk_layers:
        if layer.is_moe:
            layer.mlp.gate.register_forward_pre_hook(in_gate)
            layer.mlp.register_forward_hook(after_moe)
    with torch.no_grad():
        worker.model(random_batch(1024, seed=0).input_ids)
    metrics = worker.train_step(random_batch(1024, seed=1))
    torch.save({"seen": seen, "routes": routes, "metrics": metrics}, out)
    leave(worker)


def test_router_weight_and_bias_are_fp32_inside_a_bf16_learner_forward(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "router.pt"
    mp.spawn(_probe, args=(1, f"file://{tmp_path}/pg", str(tiny_dir), str(out)), nprocs=1)
    result = torch.load(out)
    seen = result["seen"]
    assert len(seen) >= 2, "the router's forward never ran (MoE must call the gate as a module)"
    for s in seen:
        assert s == {"weight": torch.float32, "bias": torch.float32, "sharded": False, "input": torch.float32}, s
    assert result["metrics"]["skipped"] == 0.0
    assert result["routes"]
    for used, expected in result["routes"]:  # the learner routes exactly as fp32 weights do
        assert torch.equal(used, expected)
