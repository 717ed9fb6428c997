"""The `hf` model backend (dense Qwen3 and Llama through transformers' own modeling code): which
backend loads a folder, what the recipe check refuses, and that the backend's forward (chunked
log-probs from the final hidden states, packed or padded) equals transformers' own forward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ling_rl.config import RecipeError, parse_recipe
from ling_rl.learner.logprobs import chunked_token_logprobs
from ling_rl.learner.packing import Pack
from ling_rl.models.backend import check_recipe_backend, resolve_backend
from ling_rl.models.ling_config import ModelFolderError
from ling_rl.models.tiny import init_tiny


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_models")
    return {arch: init_tiny(root / arch, preset=arch, seed=0) for arch in ("qwen3", "llama", "qwen3_moe")}


def test_auto_picks_the_backend_from_config_architectures(hf_dirs: dict[str, Path], tiny_dir: Path,
                                                         tmp_path: Path) -> None:
    archs = {arch: json.loads((d / "config.json").read_text())["architectures"] for arch, d in hf_dirs.items()}
    assert archs == {"qwen3": ["Qwen3ForCausalLM"], "llama": ["LlamaForCausalLM"], "qwen3_moe": ["Qwen3MoeForCausalLM"]}
    assert resolve_backend(hf_dirs["qwen3"]).name == "hf"
    assert resolve_backend(hf_dirs["llama"], "hf").name == "hf"
    assert resolve_backend(tiny_dir).name == "ling"
    with pytest.raises(ModelFolderError, match="model.backend: ling cannot load"):
        resolve_backend(hf_dirs["qwen3"], "ling")
    with pytest.raises(ModelFolderError, match="model.backend: hf cannot load"):
        resolve_backend(tiny_dir, "hf")
    odd = tmp_path / "odd"
    shutil.copytree(hf_dirs["qwen3"], odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(ModelFolderError, match=r"NoSuchForCausalLM.*neither BailingMoeV2"):
        resolve_backend(odd)
    (odd / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "architectures"}))
    with pytest.raises(ModelFolderError, match="no 'architectures'"):
        resolve_backend(odd)


def _recipe(**over: object):
    base = {"model": {"tiny": "qwen3"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}]}
    for key, value in over.items():
        section, name = key.split("__")
        base.setdefault(section, {})[name] = value
    return parse_recipe(base)


@pytest.mark.parametrize("setting, key", [
    ({"rollout__routing_replay": "r2"}, "rollout.routing_replay"),
    ({"rollout__routing_replay": "r3"}, "rollout.routing_replay"),
    ({"model__mtp": {"enabled": True}}, "model.mtp.enabled"),
    ({"learner__precision": "fp8"}, "learner.precision"),
    ({"learner__compile": True, "learner__packing": False}, "learner.compile"),
    ({"learner__freeze_expert_bias": False}, "learner.freeze_expert_bias"),
])
def test_the_recipe_check_refuses_what_hf_models_cannot_do(setting: dict, key: str) -> None:
    assert check_recipe_backend(_recipe()).name == "hf"
    with pytest.raises(RecipeError, match=rf"^{key}: \S+ is not supported by the hf model backend yet .*; set it to "):
        check_recipe_backend(_recipe(**setting))
    ling = _recipe(**setting, model__tiny="tiny")
    assert check_recipe_backend(ling).name == "ling"  # the Ling backend does all of these


def test_a_backend_that_cannot_train_the_tiny_model_is_named() -> None:
    with pytest.raises(RecipeError, match="model.backend: ling cannot train model.tiny=qwen3"):
        check_recipe_backend(_recipe(model__backend="ling"))


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_moe"])
def test_forward_log_probs_equal_transformers_own_padded_and_packed(hf_dirs: dict[str, Path], arch: str) -> None:
    """The backend's model (loaded part by part like the learner) gives, through the learner's
    chunked head, the log-probs of transformers' own `from_pretrained` model and forward, on
    right-padded rows and on the same rows packed end to end (attention block-causal per row)."""
    import transformers

    folder = hf_dirs[arch]
    ours = resolve_backend(folder).load(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([7, 19, 3, 12])
    ids = torch.randint(10, 1000, (4, 19), generator=g)

    with torch.no_grad():
        reference = torch.log_softmax(theirs(ids).logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        out = ours(ids, head=lambda h, w, d: chunked_token_logprobs(h[:, :-1], w, ids[:, 1:], chunk_tokens=8))
        pack = Pack.of(lengths, ids.shape[1], multiple=16)
        packed_ids = pack.pack(ids)
        packed = ours(packed_ids, positions=pack.positions, seq_lens=pack.seq_lens,
                      head=lambda h, w, d: chunked_token_logprobs(h[:, :-1], w, packed_ids[:, 1:], chunk_tokens=8))
    valid = torch.arange(19)[None, 1:] < lengths[:, None]
    padded_logp = out.head.logprobs
    torch.testing.assert_close(padded_logp.double()[valid], reference[valid], rtol=0, atol=1e-6)
    unpacked = pack.unpack(F.pad(packed.head.logprobs, (1, 0)).masked_fill(pack.starts, 0.0))[:, 1:]
    torch.testing.assert_close(unpacked.double()[valid], reference[valid], rtol=0, atol=1e-6)


def test_activation_checkpointing_recomputes_each_layer_and_keeps_the_gradients(hf_dirs: dict[str, Path]) -> None:
    """`checkpoint_layers` switches transformers' own per-layer checkpointing on: every decoder
    layer runs again in backward, and the gradients are those of the plain forward."""
    folder = hf_dirs["qwen3"]
    model = resolve_backend(folder).load(folder)
    ids = torch.randint(10, 1000, (2, 11), generator=torch.Generator().manual_seed(0))
    calls = []

    def counted(forward):  # the layer's own forward, counted (transformers' recompute skips module hooks)
        def run(*args, **kwargs):
            calls.append(1)
            return forward(*args, **kwargs)
        return run

    for layer in model.model.layers:
        layer.forward = counted(layer.forward)
    grads = []
    for recompute in (False, True):
        calls.clear()
        model.zero_grad()
        out = model(ids, head=lambda h, w, d: chunked_token_logprobs(h[:, :-1], w, ids[:, 1:]), checkpoint_layers=recompute)
        out.head.logprobs.sum().backward()
        assert len(calls) == len(model.model.layers) * (2 if recompute else 1)
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain, rtol=0, atol=1e-6)


def test_a_tied_lm_head_is_stored_once_and_loads_tied(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Qwen3-0.6B and Llama 3.2 tie the LM head to the embeddings: the folder holds the tensor
    once, the backend's load ties them again, and its logits are transformers' own."""
    import transformers
    from safetensors import safe_open

    from ling_rl.models.hf_backend import HFBackend
    from ling_rl.models.hf_io import safetensors_files
    from ling_rl.models.tiny_hf import build_tiny_hf

    folder = HFBackend().save(build_tiny_hf("qwen3", seed=1, tie_word_embeddings=True), tmp_path / "tied",
                              tokenizer_dir=hf_dirs["qwen3"])
    names = [k for path in safetensors_files(folder) for k in safe_open(str(path), "pt").keys()]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    ours = resolve_backend(folder).load(folder)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert [prefix for prefix, _ in HFBackend().weight_groups(ours)][-1] == "model.norm."  # the head is not shipped twice
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    ids = torch.randint(10, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=1e-6)


def test_fused_experts_are_one_tensor_per_expert_in_the_checkpoint(hf_dirs: dict[str, Path]) -> None:
    """Qwen3-MoE's experts, fused in transformers' module ([E, 2I, H] gate then up rows), are
    written, read and synced as the per-expert tensors vLLM and the hub's checkpoints use."""
    from safetensors import safe_open

    from ling_rl.models.hf_io import safetensors_files

    folder = hf_dirs["qwen3_moe"]
    backend = resolve_backend(folder)
    model = backend.load(folder)
    fused = model.model.layers[1].mlp.experts.gate_up_proj
    assert fused.shape == (8, 2 * 64, 128)
    stored = {}
    for path in safetensors_files(folder):
        with safe_open(str(path), "pt") as f:
            stored.update({k: f.get_tensor(k) for k in f.keys()})
    assert torch.equal(stored["model.layers.1.mlp.experts.5.gate_proj.weight"], fused[5, :64])
    assert torch.equal(stored["model.layers.1.mlp.experts.5.up_proj.weight"], fused[5, 64:])
    assert not any("gate_up_proj" in k for k in stored)
    synced = backend.inference_weights(model, model.state_dict())
    assert set(synced) == set(stored) and all(torch.equal(synced[k], stored[k]) for k in stored)
