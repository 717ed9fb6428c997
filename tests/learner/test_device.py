"""`learner.device`: resolution, the clear error without CUDA, and (gpu-marked) one learner step on
CUDA with one NCCL rank.

`cuda_step` is what the GPU check calls: it builds a one-rank LearnerWorker on a `file://`
rendezvous, runs one train step and returns the metrics with the peak CUDA memory of loading.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ling_rl.config import RecipeError, parse_recipe
from ling_rl.learner.device import BACKENDS, DeviceError, batch_to, resolve_device, rng_state, set_rng_state
from ling_rl.learner.sections import LearnerSections
from ling_rl.driver.session import learner_sections
from tests.learner.helpers import random_batch

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def _sections(device: str, precision: str = "fp32", num_gpus: int = 0) -> LearnerSections:
    return learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": precision, "lr": 1e-3, "micro_batch_tokens": 40, "num_ranks": 1, "device": device},
        "cluster": {"learner": {"num_gpus": num_gpus}},
        "algorithm": {"mismatch": {"type": "none"}, "kl": {"coef": 0.05}},
    }))


def test_cpu_resolves_to_cpu_with_gloo() -> None:
    device = resolve_device("cpu", rank=3)
    assert device == torch.device("cpu") and BACKENDS[device.type] == "gloo"


@no_cuda
def test_auto_without_cuda_is_cpu() -> None:
    assert resolve_device("auto", rank=0) == torch.device("cpu")


@no_cuda
def test_cuda_without_cuda_names_the_key() -> None:
    with pytest.raises(DeviceError, match="learner.device"):
        resolve_device("cuda", rank=0)


@no_cuda
def test_worker_setup_with_cuda_but_no_gpu_fails_before_joining_a_group(tmp_path: Path, tiny_dir: Path) -> None:
    import torch.distributed as dist

    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(0, 1, _sections("cuda", num_gpus=1), str(tiny_dir))
    with pytest.raises(DeviceError, match="learner.device"):
        worker.setup(f"file://{tmp_path}/pg")
    assert not dist.is_initialized()


def test_recipe_with_cuda_and_no_gpus_per_rank_names_the_key() -> None:
    with pytest.raises(RecipeError, match=r"learner\.device: .*cluster\.learner\.num_gpus"):
        _sections("cuda", num_gpus=0)
    assert _sections("cuda", num_gpus=1).learner.device == "cuda"


def test_batch_to_moves_every_tensor_and_keeps_values() -> None:
    batch = random_batch(1024, seed=0)
    batch.old_logprobs = torch.randn(batch.input_ids.shape)
    batch.routed_experts = [torch.randint(0, 8, (batch.input_ids.numel(), 2))]
    moved = batch_to(batch, torch.device("cpu"))
    for name in ("input_ids", "response_mask", "advantages", "unit_ids", "inf_logprobs", "old_logprobs"):
        assert torch.equal(getattr(moved, name), getattr(batch, name))
    assert torch.equal(moved.routed_experts[0], batch.routed_experts[0])


def test_rng_state_round_trip_and_old_checkpoints() -> None:
    cpu = torch.device("cpu")
    state = rng_state(cpu)
    first = torch.rand(3)
    set_rng_state(state, cpu)
    assert torch.equal(torch.rand(3), first)
    set_rng_state(state["cpu"], cpu)  # a checkpoint written before the device key: a bare tensor
    assert torch.equal(torch.rand(3), first)


# --- on a GPU ---------------------------------------------------------------------------------------


def cuda_step(model_dir: str | Path, workdir: str | Path, precision: str = "bf16", device: str = "cuda") -> dict[str, Any]:
    """One learner step with one rank on `device` (NCCL on CUDA): builds the policy and the KL
    reference model sharded from `model_dir`, trains one step on a random batch, and returns the
    metrics, the old-policy log-probs of the batch (CPU), and on CUDA the peak memory of loading
    both models (`load_peak_bytes`) next to their fp32 size (`model_bytes`). Then it saves a
    checkpoint (DCP, RNG state), trains a second step, reloads the checkpoint and trains that step
    again (`after_save`, `after_load`: their metrics), and exports the inference weights
    (`exported`: how many tensors, all on the CPU). Leaves no process group behind."""
    import torch.distributed as dist

    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(0, 1, _sections(device, precision, num_gpus=1 if device == "cuda" else 0), str(model_dir))
    on_cuda = device == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        worker.setup(f"file://{Path(workdir)}/pg-{device}-{precision}")
        load_peak = torch.cuda.max_memory_allocated() if on_cuda else 0
        model_bytes = 2 * sum(p.numel() * 4 for p in worker.model.parameters())  # policy + reference, fp32
        batch = random_batch(worker.config.vocab_size, seed=0)
        old, _ = worker.old_logprobs(batch, record_routing=False)
        metrics = worker.train_step(batch)
        ckpt = Path(workdir) / f"ckpt-{device}-{precision}"
        ckpt.mkdir(exist_ok=True)
        worker.save_checkpoint(str(ckpt))
        second = random_batch(worker.config.vocab_size, seed=1)
        after_save = worker.train_step(second)
        worker.load_checkpoint(str(ckpt))
        after_load = worker.train_step(second)
        paths = worker.write_weight_buckets(str(ckpt / "sync"), "bfloat16", 1 << 20)["paths"]  # the weight sync's files
        from safetensors.torch import load_file

        exported = {k: v for path in paths for k, v in load_file(path).items()}
        assert all(t.device.type == "cpu" for t in exported.values())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return {"metrics": metrics, "old_logprobs": old.cpu(), "mask": batch.response_mask,
            "load_peak_bytes": load_peak, "model_bytes": model_bytes, "after_save": after_save,
            "after_load": after_load, "exported": len(exported)}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_one_learner_step_on_cuda_with_one_nccl_rank(tmp_path: Path, tiny_dir: Path, precision: str) -> None:
    """bf16 (and fp8 where torchao imports) on CUDA: finite loss and gradient norm, log-probs close
    to the CPU fp32 learner's, and loading peaks under 1.5x the two fp32 models (one rank holds
    every shard)."""
    if precision == "fp8":
        pytest.importorskip("torchao")
    gpu = cuda_step(tiny_dir, tmp_path, precision, "cuda")
    cpu = cuda_step(tiny_dir, tmp_path, "fp32", "cpu")
    m = gpu["metrics"]
    assert m["skipped"] == 0.0
    assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
    mask = gpu["mask"].bool()
    t = mask.shape[1]  # fp8 on CUDA pads the positions to a multiple of 16
    diff = (gpu["old_logprobs"][:, :t][mask] - cpu["old_logprobs"][mask]).abs()
    assert float(diff.mean()) < 0.1, f"mean |logp(cuda {precision}) - logp(cpu fp32)| = {float(diff.mean()):.4f}"
    assert m["grad_norm"] == pytest.approx(cpu["metrics"]["grad_norm"], rel=0.2)
    # Printed, not asserted: on an H200 (2026-11-26) this read 73.2 MiB for 8.65 MiB of fp32 weights,
    # a fixed cost of the first CUDA/NCCL work that a tiny model cannot amortise; the bound on the
    # memory of loading is checked on a model that dominates it (next test).
    print(f"cuda {precision}: load peak {gpu['load_peak_bytes'] / 2**20:.2f} MiB, "
          f"policy + reference fp32 {gpu['model_bytes'] / 2**20:.2f} MiB")
    # Checkpoint round trip on the device: the reloaded step repeats the one after the save
    # (loosely: CUDA kernels may sum in another order), and the export has every weight.
    assert gpu["after_load"]["loss"] == pytest.approx(gpu["after_save"]["loss"], rel=1e-3, abs=1e-5)
    assert gpu["after_load"]["grad_norm"] == pytest.approx(gpu["after_save"]["grad_norm"], rel=1e-2)
    assert gpu["exported"] == cpu["exported"] > 0


@pytest.mark.gpu
def test_sharded_loading_peak_cuda_memory(tmp_path: Path) -> None:
    """The peak CUDA memory of loading bench/load_memory.py's `wide` model (0.45 GB in fp32) with the
    sharded path on one NCCL rank, over a baseline taken after loading a tiny model the same way:
    at most 1.5x the fp32 model + one layer (issue 11's goal at one rank). Written after the first
    GPU run; not run on a GPU yet."""
    import json

    import torch.multiprocessing as mp

    from bench.load_memory import _rank, _sizes, _write_model
    from ling_rl.models.tiny import init_tiny

    warm = init_tiny(tmp_path / "warm", preset="tiny", seed=1)
    model_dir = _write_model("wide", tmp_path / "wide")
    total, layer = _sizes(model_dir)
    out = tmp_path / "wide-sharded"
    mp.spawn(_rank, args=(1, f"file://{out}.pg", "sharded", str(model_dir), str(warm), "cuda", str(out)), nprocs=1)
    peak = json.loads(Path(f"{out}.rank0").read_text())["cuda_peak"]
    print(f"wide model: CUDA peak of sharded loading {peak / 2**20:.1f} MiB, fp32 model {total / 2**20:.1f} MiB")
    assert 0 < peak <= 1.5 * total + layer


def test_the_gpu_check_helper_runs_on_cpu(tmp_path: Path, tiny_dir: Path) -> None:
    """`cuda_step`'s device-agnostic part: the same helper with `device: cpu` (gloo) trains a step."""
    result = cuda_step(tiny_dir, tmp_path, "fp32", "cpu")
    assert result["metrics"]["skipped"] == 0.0 and math.isfinite(result["metrics"]["loss"])
    assert result["old_logprobs"].device.type == "cpu" and result["load_peak_bytes"] == 0
    assert result["after_load"]["loss"] == result["after_save"]["loss"]
    assert result["after_load"]["grad_norm"] == result["after_save"]["grad_norm"]
    assert result["exported"] > 0


def test_positions_padded_to_a_multiple_change_no_log_prob_or_step(tmp_path: Path, tiny_dir: Path) -> None:
    """fp8 on CUDA pads every micro-batch to a multiple of 16 positions (`token_multiple`); here the
    same padding on CPU: the log-probs and routing of the real positions, and a train step's loss and
    gradient norm, are those of the unpadded batch."""
    import torch.distributed as dist

    from ling_rl.learner.worker import LearnerWorker

    batch = random_batch(1024, seed=0)
    t = batch.input_ids.shape[1]
    assert t % 16
    results = {}
    for multiple in (1, 16):
        worker = LearnerWorker(0, 1, _sections("cpu"), str(tiny_dir))
        try:
            worker.setup(f"file://{tmp_path}/pg-{multiple}")
            worker.token_multiple = multiple
            logp, routing = worker.old_logprobs(batch, record_routing=True)
            results[multiple] = (logp, routing, worker.train_step(batch))
        finally:
            dist.destroy_process_group()
    (logp, routing, step), (logp16, routing16, step16) = results[1], results[16]
    assert logp16.shape == (batch.input_ids.shape[0], 32)
    mask = batch.response_mask.bool()  # padding positions are never read; they may differ
    torch.testing.assert_close(logp16[:, :t][mask], logp[mask], rtol=0, atol=1e-6)
    b = batch.input_ids.shape[0]
    for r, r16 in zip(routing, routing16, strict=True):
        assert torch.equal(r16.view(b, 32, -1)[:, :t][mask], r.view(b, t, -1)[mask])
    assert step16["loss"] == pytest.approx(step["loss"], rel=1e-6, abs=1e-9)
    assert step16["grad_norm"] == pytest.approx(step["grad_norm"], rel=1e-5)
