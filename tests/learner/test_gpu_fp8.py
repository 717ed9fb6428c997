"""CUDA checks of the routed experts: grouped GEMM against the per-expert reference, the grouped
kernel under FSDP2 bf16 mixed precision with fp32 parameters, and float8 routed experts in a
learner step (one NCCL rank). Skipped without CUDA (tests/conftest.py); bench/gpu_check.sh runs them.

Collecting this file imports only torch, pytest and the learner/model modules (no Ray, vLLM,
datasets, W&B), so it runs on the GPU machine with the carried wheels alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.gpu

# bf16 keeps 8 bits of mantissa: two kernels that sum the same products in different orders differ
# by a few bf16 ulps of the output scale.
BF16_TOL = dict(rtol=2e-2, atol=2e-2)
# One step of the tiny model from the same weights and batch: float8 (tensorwise linears, rowwise
# grouped GEMMs) vs bf16 changes the loss by well under this (the CPU emulation measured 0.035
# nats over 50 steps against fp32); a broken scale or layout moves it by whole nats.
FP8_LOSS_TOL = 0.1


@pytest.mark.parametrize("align", [1, 16])
def test_grouped_experts_on_cuda_equal_per_expert_reference(align: int) -> None:
    from ling_rl.models.ling_moe import grouped_ffn, looped_ffn

    torch.manual_seed(0)
    dev = torch.device("cuda")
    e, h, i = 16, 256, 128
    counts = torch.tensor([0, 7, 33, 1, 0, 64, 2, 16, 5, 0, 9, 40, 3, 1, 0, 12], device=dev)
    xs = torch.randn(int(counts.sum()), h, device=dev, dtype=torch.bfloat16, requires_grad=True)
    ws = [(0.05 * torch.randn(e, i, h, device=dev)).bfloat16().requires_grad_() for _ in range(2)]
    down = (0.05 * torch.randn(e, h, i, device=dev)).bfloat16().requires_grad_()
    got = grouped_ffn(xs, counts, ws[0], ws[1], down, align)
    # The reference: the per-expert loop in fp32 on the same bf16 inputs.
    ref_in = [t.detach().float().requires_grad_() for t in (xs, ws[0], ws[1], down)]
    want = looped_ffn(ref_in[0], counts, ref_in[1], ref_in[2], ref_in[3])
    torch.testing.assert_close(got.float(), want, **BF16_TOL)
    grads = torch.autograd.grad(got.float().square().sum(), (xs, ws[0], ws[1], down))
    ref = torch.autograd.grad(want.square().sum(), ref_in)
    for g, r in zip(grads, ref, strict=True):
        # Weight gradients come out of the grouped GEMM in bf16: an element of size ~50 is rounded
        # to 0.25 (measured on an H200: max abs gap 0.31 on 0.3% of the elements, for both aligns).
        # The relative error of the whole tensor is the meaningful check; a wrong group offset or
        # layout gives an error of order 1.
        rel = float((g.float() - r).norm() / r.norm())
        assert rel < 1e-2, f"gradient of shape {tuple(g.shape)}: relative error {rel:.2e}"


def _one_rank(rank: int, init: str, out: str) -> None:
    """One NCCL rank: the learner's build path (apply_fp8, then FSDP2 per layer with bf16 params
    and fp32 reduction) in bf16 and in fp8 with routed experts, one AdamW step each."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from ling_rl.learner.config import FP8Config
    from torch.distributed.tensor import DTensor

    from ling_rl.learner.fp8 import _unwrapped, apply_fp8
    from ling_rl.models.ling_moe import Experts, LingForCausalLM, use_grouped_mm
    from ling_rl.models.tiny import PRESETS

    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", init_method=init, rank=0, world_size=1)
    cfg = PRESETS["tiny"]
    ids = torch.randint(0, cfg.vocab_size, (4, 128), generator=torch.Generator().manual_seed(1)).to(dev)
    result: dict = {}
    for precision in ("bf16", "fp8"):
        torch.manual_seed(0)
        with dev:
            model = LingForCausalLM(cfg)
        model.init_weights()
        converted = apply_fp8(model, FP8Config(routed_experts=True), dev) if precision == "fp8" else []
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp_policy)
        fully_shard(model, mp_policy=mp_policy)
        experts = next(m for m in model.modules() if isinstance(m, Experts))
        seen: list[tuple] = []
        experts.register_forward_pre_hook(lambda m, args: seen.append((str(args[0].dtype), use_grouped_mm(args[0]))))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        def expert_weight() -> torch.Tensor:  # one rank: the local shard is the whole weight
            return _unwrapped(experts.gate_proj.detach().to_local()).float().clone()

        before = expert_weight()
        losses = []
        for _ in range(2):
            logits = model(ids).logits
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
        result[precision] = {
            "losses": losses, "converted": converted, "seen": seen,
            "param_dtype": str(experts.gate_proj.dtype),
            "expert_moved": float((expert_weight() - before).abs().max()),
            "state_types": sorted({type(t.to_local() if isinstance(t, DTensor) else t).__name__
                                   for t in model.state_dict().values()}),
        }
    torch.save(result, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("gpu_fp8")
    mp.spawn(_one_rank, args=(f"file://{tmp}/pg", str(tmp / "out.pt")), nprocs=1)
    return torch.load(tmp / "out.pt")


def test_fp32_params_under_bf16_mixed_precision_take_the_grouped_kernel(steps: dict) -> None:
    bf16 = steps["bf16"]
    assert bf16["param_dtype"] == "torch.float32"  # fp32 master weights; FSDP2 gathers them in bf16
    assert bf16["seen"] and all(s == ("torch.bfloat16", True) for s in bf16["seen"])


def test_fp8_step_with_routed_experts_is_finite_and_close_to_bf16(steps: dict) -> None:
    bf16, fp8 = steps["bf16"], steps["fp8"]
    assert any(n.endswith("mlp.experts") for n in fp8["converted"])
    assert all(s == ("torch.bfloat16", True) for s in fp8["seen"])
    assert all(torch.isfinite(torch.tensor(fp8["losses"])))
    print(f"bf16 losses {bf16['losses']}, fp8 losses {fp8['losses']}")
    for a, b in zip(bf16["losses"], fp8["losses"]):
        assert abs(a - b) < FP8_LOSS_TOL
    assert fp8["expert_moved"] > 0  # the float8 grouped GEMM's weight gradient reached AdamW
    assert fp8["state_types"] == ["Tensor"]  # plain shards, no torchao wrapper (see fp8._plain_weights)


def _worker_step(rank: int, init: str, model_dir: str, out: str) -> None:
    from ling_rl.config import parse_recipe
    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker
    from tests.learner.helpers import leave, random_batch

    cfg = learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp8", "device": "cuda", "fp8": {"routed_experts": True}, "lr": 1e-3,
                    "micro_batch_tokens": 200, "num_ranks": 1},
        "algorithm": {"mismatch": {"type": "none"}}, "cluster": {"learner": {"num_gpus": 1}},
    }))
    worker = LearnerWorker(0, 1, cfg, model_dir, threads=2)
    worker.setup(init)
    metrics = []
    for s in range(2):
        batch = random_batch(1024, seed=s)
        batch.advantages = batch.response_mask.float()
        worker.old_logprobs(batch, record_routing=False)
        metrics.append(worker.train_step(batch))
    torch.save({"metrics": metrics, "converted": worker.fp8_modules}, out)
    leave(worker)


def test_learner_worker_fp8_step_with_routed_experts_on_cuda(tmp_path: Path, tiny_dir: Path) -> None:
    """The learner's own path (`learner.device: cuda`, sharded loading, fp8 with routed experts)."""
    out = tmp_path / "out.pt"
    mp.spawn(_worker_step, args=(f"file://{tmp_path}/pg", str(tiny_dir), str(out)), nprocs=1)
    result = torch.load(out)
    assert any(n.endswith("mlp.experts") for n in result["converted"])
    for m in result["metrics"]:
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values() if isinstance(v, float)), m


def _mtp_step(rank: int, init: str, model_dir: str, out: str) -> None:
    from ling_rl.config import parse_recipe
    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker
    from tests.learner.helpers import leave, random_batch

    cfg = learner_sections(parse_recipe({
        "model": {"tiny": "tiny", "mtp": {"enabled": True}}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp8", "device": "cuda", "lr": 1e-3, "micro_batch_tokens": 200, "num_ranks": 1},
        "algorithm": {"mismatch": {"type": "none"}}, "cluster": {"learner": {"num_gpus": 1}},
    }))
    worker = LearnerWorker(0, 1, cfg, model_dir, threads=2)
    worker.setup(init)
    metrics = [worker.train_step(random_batch(1024, seed=s)) for s in range(2)]  # 17 positions: padded to 32
    torch.save({"metrics": metrics, "converted": worker.fp8_modules, "multiple": worker.token_multiple,
                "train_mtp": worker.train_mtp}, out)
    leave(worker)


def test_learner_worker_fp8_step_with_mtp_on_cuda(tmp_path: Path, tiny_dir: Path) -> None:
    """MTP on with float8 linears in the MTP layer (issue 22 item 6): its GEMMs see the trunk's
    padded token count, so `torch._scaled_mm` accepts them in backward (it failed there when
    depth d ran on B*(T-d) tokens)."""
    out = tmp_path / "out.pt"
    mp.spawn(_mtp_step, args=(f"file://{tmp_path}/pg", str(tiny_dir), str(out)), nprocs=1)
    result = torch.load(out)
    assert result["train_mtp"] and result["multiple"] == 16
    assert any(n.startswith("model.layers.2.") for n in result["converted"])  # the tiny model's MTP layer
    for m in result["metrics"]:
        assert m["mtp_loss"] > 0
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values() if isinstance(v, float)), m
