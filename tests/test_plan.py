"""The memory planner (ling_rl/commands/plan.py, `ling-rl plan`): exact parameter and optimizer arithmetic,
the activation formula against the tensors autograd really saves, and the exit codes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ling_rl.commands.cli import app
from ling_rl.config import load_recipe
from ling_rl.models.ling_config import LingConfig
from ling_rl.models.ling_moe import LingForCausalLM
from ling_rl.models.tiny import PRESETS, build_tiny_model
from ling_rl.commands.plan import (GIB, activation_bytes_per_token, count_parameters, moe_layer_count, plan_memory,
                                   route_bytes)
from ling_rl.config import parse_recipe
from ling_rl.types import TrainBatch

ROOT = Path(__file__).resolve().parents[1]

# Small enough to count by hand: hidden 4, 2 heads + 1 KV head of dim 4, layer 0 dense (MLP 6),
# layer 1 MoE (4 experts of 3, top-2, one shared expert of 3), one MTP layer, vocab 10.
HAND = LingConfig(vocab_size=10, hidden_size=4, intermediate_size=6, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=4, moe_intermediate_size=3, num_experts=4, num_experts_per_tok=2,
                  num_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, num_nextn_predict_layers=1)


def test_parameters_by_hand() -> None:
    attention = 4 * (8 + 2 * 4) + 8 * 4 + 2 * 4  # fused qkv, dense, q/k norms = 104
    norms = 2 * 4
    dense = norms + attention + 3 * 4 * 6  # 184
    moe = norms + attention + 4 * 4 + 3 * 4 * 3 * 4 + 3 * 4 * 3  # router, experts, shared expert = 308
    mtp = moe + 3 * 4 + 2 * 4 * 4  # enorm, hnorm, final norm, eh_proj = 352
    root = 10 * 4 + 4 + 10 * 4  # embeddings, final norm, lm_head = 84
    counts = count_parameters(HAND, train_mtp=False)
    assert counts.total == root + dense + moe + mtp == 928
    assert counts.trainable == counts.inference == 576  # MTP frozen and not served
    assert counts.largest_layer == mtp and counts.root == root
    assert count_parameters(HAND, train_mtp=True).trainable == 928
    assert sum(p.numel() for p in LingForCausalLM(HAND).parameters()) == 928


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_parameters_match_the_model(preset: str) -> None:
    cfg = PRESETS[preset]
    assert count_parameters(cfg, train_mtp=True).total == sum(p.numel() for p in LingForCausalLM(cfg).parameters())


def test_state_rows_are_exact(tmp_path: Path) -> None:
    """fp32 shards of parameters and gradients, AdamW m and v: 4 + 4 + 8 bytes per parameter / ranks."""
    recipe = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml")  # 2 ranks, MTP not trained
    cfg = PRESETS["tiny"]
    learner = plan_memory(recipe, cfg, host_memory_gib=64)[0]
    rows = {r.name: r.bytes for r in learner.rows}
    total, trainable = count_parameters(cfg, False).total, count_parameters(cfg, False).trainable
    assert rows["parameters (fp32 shards)"] == 4 * total // 2
    assert rows["gradients (fp32 shards)"] == 4 * trainable // 2
    assert rows["optimizer (AdamW m, v fp32)"] == 8 * trainable // 2
    assert learner.where == "host" and learner.scale == 2  # a CPU learner: both ranks on the host


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_formula_against_saved_tensors(dtype: torch.dtype) -> None:
    """What autograd saves in one forward of the tiny model (unique storages, parameters excluded)
    is within 20% of the formula (the rest: RoPE tables, routing imbalance of the padded kernel)."""
    cfg = replace(PRESETS["tiny"], num_nextn_predict_layers=0)
    model = build_tiny_model(cfg).to(dtype)
    tokens = 4 * 256
    ids = torch.randint(0, cfg.vocab_size, (4, 256), generator=torch.Generator().manual_seed(0))
    saved = saved_activation_bytes(model, lambda: model.model.norm(_trunk(model, ids)))
    c = 4 if dtype == torch.float32 else 2
    formula = sum(activation_bytes_per_token(cfg, i, c, padded=True) for i in range(cfg.num_hidden_layers))
    formula += 4 * cfg.hidden_size + 2 * c * cfg.hidden_size  # final norm
    measured = saved / tokens
    assert 0.9 < measured / formula < 1.2, (measured, formula)


def saved_activation_bytes(model: torch.nn.Module, forward: Callable[[], object]) -> int:
    """Bytes of the unique storages autograd saves for backward while `forward()` runs, the
    model's parameters excluded: what the plan's activation formula estimates."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(saved.values())


def _trunk(model: LingForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    x = model.model.word_embeddings(ids)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    for layer in model.trunk_layers:
        x, _ = layer(x, positions)
    return x


def _plan(*args: str):
    return CliRunner().invoke(app, ["plan", *args])


def test_plan_exit_codes_on_a_cpu_recipe() -> None:
    ok = _plan("recipes/tiny_cpu.yaml", "--host-memory-gib", "64")
    assert ok.exit_code == 0, ok.output
    assert "learner" in ok.output and "fits: recipes/tiny_cpu.yaml" in ok.output
    small = _plan("recipes/tiny_cpu.yaml", "--host-memory-gib", "0.5")
    assert small.exit_code == 3, small.output
    assert "learner: needs" in small.output and "host" in small.output


def test_evo_cot_on_8_h100_and_names_the_key_when_not() -> None:
    """At what an 80 GB H100 reports (79.2 GiB, the default), the shipped 6 learner ranks + 2
    engines fit; 5 + 3 needs ~85 GiB per learner GPU and is refused naming learner.num_ranks."""
    fits = _plan("recipes/evo_cot.yaml", "--host-memory-gib", "512")
    assert fits.exit_code == 0, fits.output
    assert "79.2" in fits.output
    five = _plan("recipes/evo_cot.yaml", "learner.num_ranks=5", "rollout.num_engines=3", "--host-memory-gib", "512")
    assert five.exit_code == 3 and "79.2 GiB available" in five.output and "learner.num_ranks" in five.output
    tight = _plan("recipes/evo_cot.yaml", "--gpu-memory-gib", "8", "--host-memory-gib", "512")
    assert tight.exit_code == 3, tight.output
    assert "learner: needs" in tight.output and "change learner.num_ranks" in tight.output
    assert "rollout: needs" in tight.output
    unchecked = _plan("recipes/evo_cot.yaml", "learner.activation_checkpointing=false", "--host-memory-gib", "512")
    assert unchecked.exit_code == 3 and "change learner.activation_checkpointing" in unchecked.output


def test_plan_without_a_model_config_is_one_line(tmp_path: Path) -> None:
    result = _plan("recipes/evo_cot.yaml", "model.path=acme/not-cached", "--host-memory-gib", "512")
    assert result.exit_code == 2, result.output
    assert "model.path: acme/not-cached is not in the Hugging Face cache" in result.output
    assert "Traceback" not in result.output


def _dft_then_rl(rank: int, init: str, model_dir: str, out: str) -> None:
    import transformers

    from ling_rl.config import parse_recipe
    from ling_rl.curriculum.dft import DFTConfig, DFTData
    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker
    from ling_rl.types import TrainBatch
    from tests.learner.helpers import leave

    tok = transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    recipe = parse_recipe({"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
                           "learner": {"precision": "fp32", "num_ranks": 1}})
    worker = LearnerWorker(rank, 1, learner_sections(recipe), model_dir)
    worker.setup(init)
    rows = [__import__("json").loads(line) for line in (ROOT / "data/arith/train.jsonl").read_text().splitlines()[:16]]
    worker.sft_step(DFTData(rows, DFTConfig(enabled=True, batch_size=8), tok, "prompt", "answer", "t").batch(tok.pad_token_id), lr=1e-3)
    during_dft = hasattr(worker, "sft_optimizer")
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 8:] = True
    worker.train_step(TrainBatch(input_ids=ids, response_mask=mask, advantages=mask.float(),
                                 unit_ids=torch.zeros(2, 16, dtype=torch.long), inf_logprobs=torch.zeros(2, 16)))
    torch.save({"during_dft": during_dft, "after_rl": hasattr(worker, "sft_optimizer"),
                "rl_state": len(worker.optimizer.state)}, out)
    leave(worker)


def test_dft_optimizer_is_freed_when_rl_starts(tmp_path: Path, tiny_dir: Path) -> None:
    """The planner counts one AdamW state: the DFT warm start's own optimizer is dropped at the
    first RL step (it is never checkpointed, so a resumed run never had it either)."""
    import torch.multiprocessing as mp

    mp.spawn(_dft_then_rl, args=(f"file://{tmp_path}/pg", str(tiny_dir), str(tmp_path / "r.pt")), nprocs=1)
    result = torch.load(tmp_path / "r.pt")
    assert result == {"during_dft": True, "after_rl": False, "rl_state": result["rl_state"]} and result["rl_state"] > 0


# --- terms the planner used to leave out (issue 22, item 16) -------------------------------------


def _gpu_recipe(**sections: dict) -> object:
    """A recipe with the learner and the engines on GPUs (the planner's GPU rows)."""
    data: dict = {"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
                  "learner": {"num_ranks": 2, "precision": "bf16", "device": "cuda", "micro_batch_tokens": 4096},
                  "cluster": {"learner": {"num_gpus": 1}, "rollout": {"num_gpus": 1}}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_recipe(data)


def _rows(role) -> dict[str, int]:
    return {r.name.split(" (")[0]: r.bytes for r in role.rows if r.counted}


def test_fsdp2_rows_count_unsharded_bf16_gradients_and_two_reduce_scatter_buffers() -> None:
    """Ling-mini, bf16: besides the gathered bf16 parameters (root + layer + prefetched layer), a
    layer's gradient in bf16 (and the root's, held until the end of backward), and two fp32
    reduce-scatter inputs (the previous one may still be in flight)."""
    cfg = LingConfig.from_hf_dict(__import__("json").loads((ROOT / "recipes/configs/ling-mini-2.0.json").read_text()))
    p = count_parameters(cfg, train_mtp=False)
    rows = _rows(plan_memory(_gpu_recipe(), cfg, 79.2, 512)[0])
    assert rows["unsharded parameters"] == 2 * (p.root + 2 * p.largest_layer)
    assert rows["unsharded gradients"] == 2 * (p.root + p.largest_layer)
    assert rows["reduce-scatter buffers"] == 4 * (max(p.root, p.largest_layer) + p.largest_layer)
    assert round(rows["unsharded gradients"] / GIB, 2) == 2.74  # 0.64B root + 0.83B MTP-sized layer, 2 B each


def test_head_gradient_temporary_in_bf16_only() -> None:
    """chunked_token_logprobs' backward in bf16 makes a [V, H] bf16 temporary (each chunk's product,
    then the cast of the fp32 sum); in fp32 it accumulates in place (addmm_), no temporary."""
    cfg = PRESETS["tiny"]
    bf16 = _rows(plan_memory(_gpu_recipe(), cfg, 79.2, 512)[0])
    assert bf16["lm_head grad temporary"] == 2 * cfg.vocab_size * cfg.hidden_size
    fp32 = _rows(plan_memory(_gpu_recipe(learner={"precision": "fp32"}), cfg, 79.2, 512)[0])
    assert "lm_head grad temporary" not in fp32


def test_allocator_fragmentation_on_gpu_only() -> None:
    cfg = PRESETS["tiny"]
    learner = plan_memory(_gpu_recipe(), cfg, 79.2, 512)[0]
    rows = _rows(learner)
    others = sum(v for k, v in rows.items() if k != "allocator fragmentation")
    assert rows["allocator fragmentation"] == int(0.10 * others)
    cpu = plan_memory(load_recipe(ROOT / "recipes" / "tiny_cpu.yaml"), cfg, host_memory_gib=64)[0]
    assert "allocator fragmentation" not in _rows(cpu)


@pytest.mark.parametrize(("mode", "updates", "copies"), [("none", 4, 0), ("r2", 1, 0), ("r2", 4, 1), ("r3", 1, 1), ("r3", 4, 2)])
def test_routes_row_is_the_batch_routes_in_int64(mode: str, updates: int, copies: int) -> None:
    """The routes row equals the bytes of `TrainBatch.routed_experts` for a full batch (int64, top_k
    per token per MoE layer), once per copy the learner holds."""
    cfg = PRESETS["tiny"]
    recipe = _gpu_recipe(rollout={"routing_replay": mode, "prompts_per_step": 2, "group_size": 4,
                                  "max_prompt_tokens": 16, "max_response_tokens": 48},
                         learner={"updates_per_batch": updates})
    rows, t = 2 * 4, 16 + 48
    routes = [torch.zeros(rows * t, cfg.num_experts_per_tok, dtype=torch.long) for _ in range(moe_layer_count(cfg))]
    batch = TrainBatch(input_ids=torch.zeros(rows, t, dtype=torch.long), response_mask=torch.ones(rows, t, dtype=torch.bool),
                       advantages=torch.zeros(rows, t), unit_ids=torch.zeros(rows, t, dtype=torch.long),
                       inf_logprobs=torch.zeros(rows, t), routed_experts=routes)
    one_copy = sum(r.nbytes for r in batch.routed_experts)
    assert route_bytes(recipe, cfg) == copies * one_copy
    learner = _rows(plan_memory(recipe, cfg, 79.2, 512)[0])
    assert learner.get("routes", 0) == copies * one_copy


def test_kv_heads_are_replicated_when_tp_exceeds_them() -> None:
    """Ling-mini has 4 KV heads: at tp 8 each GPU holds one (replicated), as at tp 4, not half of one."""
    cfg = LingConfig.from_hf_dict(__import__("json").loads((ROOT / "recipes/configs/ling-mini-2.0.json").read_text()))

    def kv(tp: int) -> int:
        recipe = _gpu_recipe(rollout={"tensor_parallel_size": tp, "max_num_seqs": 8}, cluster={"rollout": {"num_gpus": tp}})
        return _rows(plan_memory(recipe, cfg, 79.2, 512)[1])["KV cache"]

    one_head = 8 * (512 + 512) * 2 * cfg.num_hidden_layers * cfg.head_dim * 2  # seqs x tokens x K,V x layers x dim x bf16
    assert kv(1) == 4 * one_head and kv(2) == 2 * one_head
    assert kv(4) == kv(8) == one_head


def test_default_gpu_is_what_an_h100_reports() -> None:
    learner = plan_memory(_gpu_recipe(), PRESETS["tiny"], host_memory_gib=512)[0]
    assert learner.budget == int(79.2 * GIB)


def test_host_counts_the_larger_of_final_export_and_sync_staging() -> None:
    """Final export: the fp32 model (MTP included) on learner rank 0; shm_file staging: the engine-
    dtype model under /dev/shm. They never exist at once: the larger counts, the other is shown."""
    cfg = PRESETS["small"]
    total, inference = count_parameters(cfg, True).total, count_parameters(cfg, False).inference
    cpu = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", ["model.tiny=small", "model.dtype=bfloat16"])
    host = plan_memory(cpu, cfg, host_memory_gib=64)[2]
    rows = {r.name.split(" (")[0].split(":")[0]: r for r in host.rows}
    assert rows["final export"].bytes == 4 * total and rows["final export"].counted
    assert rows["weight sync staging"].bytes == 2 * inference and not rows["weight sync staging"].counted
    no_export = plan_memory(load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", ["model.tiny=small", "model.dtype=bfloat16",
                                                                              "checkpoint.export_hf=false"]), cfg, host_memory_gib=64)[2]
    staging = [r for r in no_export.rows if r.name.startswith("weight sync staging")]
    assert len(staging) == 1 and staging[0].counted and staging[0].bytes == 2 * inference
    nccl = plan_memory(_gpu_recipe(), cfg, 79.2, 512)[2]  # engines on GPUs: auto is nccl, nothing staged
    assert not any(r.name.startswith("weight sync staging") for r in nccl.rows)
