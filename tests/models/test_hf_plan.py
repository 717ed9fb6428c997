"""`ling-rl plan` for the `hf` backend's architectures (ling_rl/commands/plan_models.py): parameter
counts equal what transformers builds from the same config.json (meta device, exact), active
parameters by hand, the activation formula against the tensors autograd saves in a packed forward,
the shipped hub configs (Qwen3-0.6B, Qwen3-30B-A3B) against their published sizes, and the CLI's
refusals (a feature the backend lacks, an architecture without a plan)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from typer.testing import CliRunner

from ling_rl.commands.cli import app
from ling_rl.commands.plan import (activation_bytes_per_token, attention_mask_bytes, count_parameters, model_config,
                                   plan_memory)
from ling_rl.commands.plan_models import describe
from ling_rl.config import RecipeError, load_recipe
from ling_rl.learner.packing import Pack
from ling_rl.models.tiny_hf import HF_TINY, build_tiny_hf
from tests.test_plan import saved_activation_bytes

ROOT = Path(__file__).resolve().parents[2]


def _tiny(arch: str, **over: Any) -> dict[str, Any]:
    return HF_TINY[arch](**over).to_dict()


def _without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


# config.json dicts: the tiny models, and variants that exercise each config key the plan reads.
CONFIGS: dict[str, dict[str, Any]] = {
    "qwen3": _tiny("qwen3"),
    "qwen3 tied": _tiny("qwen3", tie_word_embeddings=True),
    "qwen3 no head_dim, biases": _without(_tiny("qwen3", attention_bias=True), "head_dim"),
    "qwen3 no kv heads": _without(_tiny("qwen3", num_attention_heads=64, head_dim=16), "num_key_value_heads"),
    "llama": _tiny("llama"),
    "llama no head_dim, kv heads, biases": _without(_tiny("llama", attention_bias=True, mlp_bias=True), "head_dim",
                                                    "num_key_value_heads"),
    "qwen3_moe": _tiny("qwen3_moe"),
    "qwen3_moe sparse step 2, 4 layers": _tiny("qwen3_moe", num_hidden_layers=4, decoder_sparse_step=2,
                                               mlp_only_layers=[3]),
    "qwen3_moe no head_dim": _without(_tiny("qwen3_moe", head_dim=32), "head_dim"),
    "qwen3-0.6b (shipped)": json.loads((ROOT / "recipes/configs/qwen3-0.6b.json").read_text()),
}


def _transformers_count(data: dict[str, Any]) -> int:
    """Parameters of transformers' own model of `data` (as `hf` loads it), built on the meta device."""
    config = transformers.AutoConfig.for_model(data["model_type"], **_without(data, "model_type"))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # a tied lm_head is the embedding: counted once


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_count_equals_transformers(name: str) -> None:
    model = describe(CONFIGS[name], source=name)
    assert model.backend == "hf"
    counts = count_parameters(model, train_mtp=False)
    assert counts.total == counts.inference == counts.trainable == _transformers_count(CONFIGS[name])


def test_qwen3_moe_active_parameters_by_hand() -> None:
    """Tiny Qwen3-MoE: layer 1 is MoE (8 experts of width 64, top-2), layer 0 dense. A token uses 2
    of the 8 experts: the other 6 x (gate, up, down) of 64 x 128 are inactive."""
    counts = count_parameters(describe(CONFIGS["qwen3_moe"], "qwen3_moe"), train_mtp=False)
    assert counts.active == counts.total - 6 * 3 * 64 * 128
    sparse = describe(CONFIGS["qwen3_moe sparse step 2, 4 layers"], "x")
    assert sorted(sparse.moe_layers) == [1]  # (i + 1) % 2 == 0 for i = 1, 3; layer 3 is mlp-only
    dense = count_parameters(describe(CONFIGS["qwen3"], "qwen3"), train_mtp=False)
    assert dense.active == dense.total


def test_qwen3_0_6b_is_596m() -> None:
    """The shipped Qwen3-0.6B config (tied embeddings): 596,049,920 parameters, 440,466,432 of them
    outside the embedding (the published 0.6B and 0.44B non-embedding)."""
    counts = count_parameters(describe(CONFIGS["qwen3-0.6b (shipped)"], "q"), train_mtp=False)
    assert counts.total == 596_049_920 == counts.active
    assert counts.total - counts.root == 440_466_432


def test_qwen3_30b_a3b_matches_published_sizes() -> None:
    """Qwen3-30B-A3B: 30.5B total and 3.3B active as published (model card), within 2%."""
    model = describe(json.loads((ROOT / "recipes/configs/qwen3-30b-a3b.json").read_text()), "q30")
    counts = count_parameters(model, train_mtp=False)
    assert abs(counts.total / 30.5e9 - 1) < 0.02 and abs(counts.active / 3.3e9 - 1) < 0.02
    assert model.moe_layer_count == 48


@pytest.mark.parametrize(("arch", "dtype"), [("qwen3", torch.float32), ("qwen3", torch.bfloat16),
                                             ("llama", torch.float32), ("qwen3_moe", torch.float32),
                                             ("qwen3_moe", torch.bfloat16)])
def test_activation_formula_against_saved_tensors(arch: str, dtype: torch.dtype) -> None:
    """What autograd saves in one packed forward of the tiny model (4 sequences of 512 in one row,
    as the learner packs: transformers attends through a block-causal mask), unique storages,
    parameters excluded, is within 20% of the formula with the mask term."""
    model = build_tiny_hf(arch).to(dtype)
    plan = describe(_tiny(arch), arch)
    lengths = [512] * 4  # at 2048 tokens the per-layer masks are a third of the total (1.4-1.6x without them)
    packed = Pack.of(torch.tensor(lengths), 512)
    ids = torch.randint(0, plan.vocab_size, (1, sum(lengths)), generator=torch.Generator().manual_seed(0))
    # HFCausalLM: transformers' decoder, then the lm_head
    measured = saved_activation_bytes(model, lambda: model(ids, positions=packed.positions))
    c = 4 if dtype == torch.float32 else 2
    tokens = sum(lengths)
    formula = tokens * sum(activation_bytes_per_token(plan, i, c) for i in range(plan.num_hidden_layers))
    formula += tokens * (4 * plan.hidden_size + 2 * c * plan.hidden_size)  # final norm
    formula += attention_mask_bytes(plan, tokens, c, plan.num_hidden_layers)
    assert 0.9 < measured / formula < 1.2, (measured, formula)


def _plan(*args: str):
    return CliRunner().invoke(app, ["plan", *args])


def test_plan_qwen3_0_6b_recipe_prints_its_model_and_fits() -> None:
    result = _plan("recipes/qwen3_0_6b.yaml", "--host-memory-gib", "512")
    assert result.exit_code == 0, result.output
    assert "Qwen3ForCausalLM (hf backend; recipes/configs/qwen3-0.6b.json): 596.0M parameters" in result.output
    assert "fits: recipes/qwen3_0_6b.yaml" in result.output


@pytest.mark.parametrize("tiny", ["qwen3", "llama", "qwen3_moe"])
def test_plan_tiny_hf_recipe(tiny: str) -> None:
    result = _plan("recipes/tiny_cpu.yaml", f"model.tiny={tiny}", "--host-memory-gib", "64")
    assert result.exit_code == 0, result.output
    assert f"(hf backend; model.tiny={tiny})" in result.output


def test_plan_refuses_what_the_hf_backend_lacks() -> None:
    """The same lines as the recipe check (`ling_rl.models.backend.recipe_problems`)."""
    fp8 = _plan("recipes/qwen3_0_6b.yaml", "learner.precision=fp8", "--host-memory-gib", "512")
    assert fp8.exit_code == 2 and "learner.precision: fp8 is not supported by the hf model backend" in fp8.output
    mtp = _plan("recipes/qwen3_0_6b.yaml", "model.mtp.enabled=true", "--host-memory-gib", "512")
    assert mtp.exit_code == 2 and "model.mtp.enabled: true is not supported by the hf model backend" in mtp.output
    r3 = _plan("recipes/tiny_cpu.yaml", "model.tiny=qwen3", "rollout.routing_replay=r3", "--host-memory-gib", "64")
    assert r3.exit_code == 2 and "rollout.routing_replay: r3 is not supported" in r3.output
    ling = _plan("recipes/qwen3_0_6b.yaml", "model.backend=ling", "--host-memory-gib", "512")
    assert ling.exit_code == 2 and "model.backend: ling cannot train Qwen3ForCausalLM" in ling.output
    # Routing replay on Qwen3-MoE has a router adapter: planned, with its routes row.
    moe = load_recipe(ROOT / "recipes/tiny_cpu.yaml", ["model.tiny=qwen3_moe", "rollout.routing_replay=r3"])
    learner = plan_memory(moe, model_config(moe), host_memory_gib=64)[0]
    assert any(r.name.startswith("routes (r3") for r in learner.rows)
    with pytest.raises(RecipeError, match="learner.precision: fp8"):
        fp8_recipe = load_recipe(ROOT / "recipes/qwen3_0_6b.yaml", ["learner.precision=fp8"])
        plan_memory(fp8_recipe, model_config(fp8_recipe, ROOT / "recipes/qwen3_0_6b.yaml"), host_memory_gib=512)


def test_unknown_architecture_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"architectures": ["MistralForCausalLM"], "hidden_size": 64}))
    result = _plan("recipes/qwen3_0_6b.yaml", "--model-config", str(config), "--host-memory-gib", "512")
    assert result.exit_code == 2, result.output
    assert f"--model-config: {config}: architectures=['MistralForCausalLM'] has no memory plan; ling-rl plan knows " \
           "BailingMoeV2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM" in result.output.replace("\n", "")
    assert "Traceback" not in result.output
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(_without(_tiny("qwen3"), "hidden_size")))
    bad = _plan("recipes/qwen3_0_6b.yaml", "--model-config", str(missing), "--host-memory-gib", "512")
    assert bad.exit_code == 2 and "missing required key hidden_size" in bad.output
