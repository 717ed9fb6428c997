"""The memory planner (ling_rl/commands/plan.py, `ling-rl plan`): exact parameter and optimizer arithmetic,
the activation formula against the tensors autograd really saves, and the exit codes."""

from __future__ import annotations

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
from ling_rl.commands.plan import activation_bytes_per_token, count_parameters, plan_memory

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
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    tokens = 4 * 256
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model.norm(_trunk(model, torch.randint(0, cfg.vocab_size, (4, 256), generator=torch.Generator().manual_seed(0))))
    c = 4 if dtype == torch.float32 else 2
    formula = sum(activation_bytes_per_token(cfg, i, c, padded=True) for i in range(cfg.num_hidden_layers))
    formula += 4 * cfg.hidden_size + 2 * c * cfg.hidden_size  # final norm
    measured = sum(saved.values()) / tokens
    assert 0.9 < measured / formula < 1.2, (measured, formula)


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


def test_evo_cot_fits_8_x_80gb_and_names_the_key_when_not() -> None:
    fits = _plan("recipes/evo_cot.yaml", "--gpu-memory-gib", "80", "--host-memory-gib", "512")
    assert fits.exit_code == 0, fits.output
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
