"""The Ling 2.0 MoE policy: routing rule, MTP, routing replay, checkpoint round trip, bad folders."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ling_rl.models.hf_io import load_model, save_model, to_hf_weights
from ling_rl.models.ling_config import LingConfig, ModelFolderError
from ling_rl.models.ling_moe import LingForCausalLM, Router
from ling_rl.models.tiny import PRESETS, TINY, build_tiny_model


def reference_route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, cfg: LingConfig) -> tuple[list[set[int]], torch.Tensor]:
    """The Ling 2.0 routing rule written out token by token, for readability not speed."""
    chosen, weights = [], torch.zeros(x.shape[0], cfg.num_experts)
    per_group = cfg.num_experts // cfg.n_group
    for t in range(x.shape[0]):
        scores = [1 / (1 + torch.exp(-(x[t] @ weight[e]))).item() for e in range(cfg.num_experts)]
        biased = [scores[e] + bias[e].item() for e in range(cfg.num_experts)]
        group_score = []
        for g in range(cfg.n_group):
            members = sorted(biased[g * per_group : (g + 1) * per_group], reverse=True)
            group_score.append(members[0] + members[1])
        groups = sorted(range(cfg.n_group), key=lambda g: -group_score[g])[: cfg.topk_group]
        allowed = [e for e in range(cfg.num_experts) if e // per_group in groups]
        top = sorted(allowed, key=lambda e: -biased[e])[: cfg.num_experts_per_tok]
        total = sum(scores[e] for e in top)  # weights use the unbiased scores
        for e in top:
            weights[t, e] = scores[e] / total * cfg.routed_scaling_factor
        chosen.append(set(top))
    return chosen, weights


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_routing_matches_reference(preset: str) -> None:
    cfg = PRESETS[preset]
    torch.manual_seed(1)
    router = Router(cfg)
    torch.nn.init.normal_(router.weight, std=0.5)
    router.expert_bias.normal_(0, 0.3)  # large enough that the bias changes selections
    x = torch.randn(64, cfg.hidden_size)
    scores = router.scores(x)
    ids = router.select(scores)
    w = router.weights(scores, ids)
    ref_sets, ref_w = reference_route(x.double(), router.weight.double(), router.expert_bias.double(), cfg)
    assert [set(row.tolist()) for row in ids] == ref_sets
    dense = torch.zeros(64, cfg.num_experts).scatter(1, ids, w)
    torch.testing.assert_close(dense, ref_w.float(), atol=1e-5, rtol=1e-5)
    # The bias really steers the choice: without it, some tokens pick other experts.
    router.expert_bias.zero_()
    assert [set(r.tolist()) for r in router.select(scores)] != ref_sets


def test_expert_bias_gets_no_gradient_and_routing_replay_reproduces_logits() -> None:
    model = build_tiny_model(TINY, seed=3)
    x = torch.randint(0, TINY.vocab_size, (3, 17))
    out = model(x, return_routed_experts=True)
    assert out.routed_experts is not None and len(out.routed_experts) == 1
    assert out.routed_experts[0].shape == (3 * 17, TINY.num_experts_per_tok)
    replayed = model(x, routed_experts=out.routed_experts)
    torch.testing.assert_close(replayed.logits, out.logits, atol=0, rtol=0)
    # Replaying a different routing changes the output: the ids are really used.
    other = [(out.routed_experts[0] + 1) % TINY.num_experts]
    assert not torch.allclose(model(x, routed_experts=other).logits, out.logits)
    replayed.logits.logsumexp(-1).mean().backward()
    assert all(b.grad is None for n, b in model.named_buffers() if n.endswith("expert_bias"))
    assert model.model.layers[1].mlp.gate.weight.grad is not None


def test_mtp_logits_shapes_and_gradient() -> None:
    model = build_tiny_model(TINY, seed=0)
    x = torch.randint(0, TINY.vocab_size, (2, 12))
    out = model(x, with_mtp=True)
    assert out.mtp_logits is not None and out.mtp_logits[0].shape == (2, 11, TINY.vocab_size)
    # MTP at position t predicts token t+2
    loss = torch.nn.functional.cross_entropy(out.mtp_logits[0][:, :-1].reshape(-1, TINY.vocab_size), x[:, 2:].reshape(-1))
    loss.backward()
    assert model.mtp_layers[0].eh_proj.weight.grad is not None


def test_right_padding_does_not_change_valid_positions() -> None:
    model = build_tiny_model(TINY, seed=0)
    x = torch.randint(0, TINY.vocab_size, (1, 9))
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded).logits[:, :9], model(x).logits, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = build_tiny_model(TINY, seed=5)
    folder = save_model(model, tmp_path / "m")
    loaded = load_model(folder)
    x = torch.randint(0, TINY.vocab_size, (2, 20))
    a, b = model(x, with_mtp=True), loaded(x, with_mtp=True)
    torch.testing.assert_close(b.logits, a.logits, atol=0, rtol=0)
    torch.testing.assert_close(b.mtp_logits[0], a.mtp_logits[0], atol=0, rtol=0)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    # vLLM reads only indexed shards; the MTP layer must stay out of them.
    assert not any(k.startswith(f"model.layers.{TINY.num_hidden_layers}.") for k in index["weight_map"])
    assert (folder / "mtp.safetensors").is_file()


def test_save_is_sharded_and_atomic(tmp_path: Path) -> None:
    model = build_tiny_model(TINY, seed=5)
    folder = save_model(model, tmp_path / "m", max_shard_bytes=200_000)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    torch.testing.assert_close(load_model(folder).lm_head.weight, model.lm_head.weight)

    class Boom(RuntimeError):
        pass

    state = dict(model.state_dict())
    with pytest.raises(Boom):
        save_model(model, folder, state=_RaisingDict(state, Boom))
    # The previous folder is intact and no temporary folder is left behind.
    torch.testing.assert_close(load_model(folder).lm_head.weight, model.lm_head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


class _RaisingDict(dict):
    """A state dict whose iteration fails half-way, as a crash during save would."""

    def __init__(self, state: dict, exc: type[Exception]) -> None:
        super().__init__(state)
        self.exc = exc

    def items(self):  # type: ignore[override]
        for i, kv in enumerate(super().items()):
            if i == 5:
                raise self.exc
            yield kv


def _ling_mini_layout(folder: Path, model: LingForCausalLM) -> None:
    """Write `model` the way the Ling-mini-2.0 release is laid out: bf16 shards with an index that
    also holds the MTP layer, the release's config keys (including ones ling-rl does not use),
    and its own remote-code file names."""
    cfg = model.config
    folder.mkdir()
    weights = {k: v.to(torch.bfloat16) for k, v in to_hf_weights(model.state_dict())}
    names = sorted(weights)
    shards = [names[i::3] for i in range(3)]
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-00003.safetensors"
        save_file({k: weights[k] for k in shard}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    hf = cfg.to_hf_dict()
    hf.update(
        auto_map={"AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
                  "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
                  "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM"},
        torch_dtype="bfloat16", transformers_version="4.52.3", output_router_logits=False, use_cache=True,
        max_window_layers=20, use_sliding_window=False, router_type="topN",
    )
    (folder / "config.json").write_text(json.dumps(hf))


def test_loads_a_release_style_folder(tmp_path: Path) -> None:
    model = build_tiny_model(TINY, seed=7)
    model.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})  # bf16-exact
    _ling_mini_layout(tmp_path / "ling-mini", model)
    loaded = load_model(tmp_path / "ling-mini")
    assert loaded.config.extra["router_type"] == "topN"
    x = torch.randint(0, TINY.vocab_size, (2, 10))
    torch.testing.assert_close(loaded(x, with_mtp=True).mtp_logits[0], model(x, with_mtp=True).mtp_logits[0])
    # Re-exported, the unknown keys survive.
    out = save_model(loaded, tmp_path / "re")
    assert json.loads((out / "config.json").read_text())["router_type"] == "topN"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: _edit_config(d, architectures=["LlamaForCausalLM"]), "not supported"),
        (lambda d: _edit_config(d, num_experts=16), "experts"),
        (lambda d: _edit_config(d, hidden_size=64), "shape"),
        (lambda d: _edit_config(d, num_nextn_predict_layers=2), "missing weight"),
        (lambda d: _edit_config(d, num_hidden_layers=1), "unexpected weight"),
        (lambda d: _edit_config(d, n_group=3), "n_group"),
        (lambda d: _edit_config(d, vocab_size=None), "vocab_size"),
        (lambda d: _drop_weight(d, "model.norm.weight"), "missing weight(s) model.norm.weight"),
        (lambda d: (d / "model-00001-of-00001.safetensors").unlink(), "does not exist"),
        (lambda d: (d / "config.json").write_text("{not json"), "invalid JSON"),
    ],
)
def test_bad_model_folders_give_clear_errors(tmp_path: Path, tiny_dir: Path, mutate, message: str) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(tiny_dir, folder)
    mutate(folder)
    with pytest.raises(ModelFolderError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_model(folder)
    assert str(folder) in str(info.value)


def _edit_config(folder: Path, **changes: object) -> None:
    data = json.loads((folder / "config.json").read_text())
    data.update(changes)
    (folder / "config.json").write_text(json.dumps(data))


def _drop_weight(folder: Path, name: str) -> None:
    from safetensors.torch import load_file

    shard = folder / "model-00001-of-00001.safetensors"
    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard))


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ModelFolderError, match="topk_group"):
        replace(TINY, topk_group=5)
    with pytest.raises(ModelFolderError, match="num_key_value_heads"):
        replace(TINY, num_key_value_heads=3)


# --- what an export keeps and what it must not touch (issue 22) --------------------------------


def test_load_in_bfloat16_keeps_computed_buffers_in_fp32(tmp_path: Path) -> None:
    """Parameters take the dtype; the RoPE frequencies and the router's expert bias stay fp32 and
    exact (bf16 would round a bias of 1e-3 + 1e-6 to 1e-3, and the frequencies to 3 digits)."""
    model = build_tiny_model(TINY, seed=3)
    bias = torch.full((TINY.num_experts,), 1e-3) + torch.arange(TINY.num_experts) * 1e-6
    model.model.layers[1].mlp.gate.expert_bias.copy_(bias)
    loaded = load_model(save_model(model, tmp_path / "m"), dtype=torch.bfloat16)
    assert loaded.model.word_embeddings.weight.dtype == torch.bfloat16
    gate = loaded.model.layers[1].mlp.gate
    assert gate.weight.dtype == torch.bfloat16
    assert gate.expert_bias.dtype == torch.float32 and torch.equal(gate.expert_bias, bias)
    for layer in loaded.model.layers:
        assert layer.attention.rotary.inv_freq.dtype == torch.float32
        torch.testing.assert_close(layer.attention.rotary.inv_freq, model.model.layers[0].attention.rotary.inv_freq,
                                   atol=0, rtol=0)


def test_save_keeps_the_source_generation_config(tmp_path: Path) -> None:
    """The source's extra stop ids (which vLLM honours) survive the export; without a source file
    one is written from the config's ids."""
    from ling_rl.models.tiny import init_tiny

    source = init_tiny(tmp_path / "source")
    assert json.loads((source / "generation_config.json").read_text())["eos_token_id"] == load_model(source).config.eos_token_id
    release = {"bos_token_id": 2, "eos_token_id": [0, 3, 7], "pad_token_id": 1, "temperature": 0.7}
    (source / "generation_config.json").write_text(json.dumps(release))
    out = save_model(load_model(source), tmp_path / "export", tokenizer_dir=source)
    assert json.loads((out / "generation_config.json").read_text()) == release


def _user_folder(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "thesis.tex").write_text("\\chapter{Results}")
    (root / "notes.txt").write_text("keep me")
    return root


def test_save_refuses_a_folder_that_is_not_a_previous_export(tmp_path: Path) -> None:
    model = build_tiny_model(TINY, seed=0)
    target = _user_folder(tmp_path / "thesis")
    with pytest.raises(ModelFolderError, match=r"not a model folder written by ling-rl \(it holds notes.txt, src/\)"):
        save_model(model, target)
    assert (target / "src" / "thesis.tex").read_text() == "\\chapter{Results}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no temporary folder left
    # A file at the target is refused too; an empty folder and a previous export are replaced.
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="not a folder"):
        save_model(model, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    save_model(model, tmp_path / "empty")
    save_model(model, tmp_path / "empty", max_shard_bytes=200_000)  # more shards, then fewer
    save_model(model, tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").glob("model-*")) == ["model-00001-of-00001.safetensors"]


def test_init_tiny_command_refuses_a_folder_of_user_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ling_rl.commands.cli import app

    target = _user_folder(tmp_path / "thesis")
    result = CliRunner().invoke(app, ["init-tiny", str(target)])
    assert result.exit_code == 2, result.output
    assert "not a model folder written by ling-rl" in result.output and "src/" in result.output
    assert (target / "src" / "thesis.tex").is_file() and (target / "notes.txt").is_file()
    assert not (target / "config.json").exists()
