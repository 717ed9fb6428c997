"""Sharded loading: the model is built on the meta device, sharded, then filled part by part from
the checkpoint; it must equal the plain full load bit for bit (policy and reference model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.learner.sections import LearnerSections
from ling_rl.driver.session import learner_sections
from ling_rl.models.hf_io import (
    check_checkpoint,
    checkpoint_parts,
    from_hf_weights,
    load_model,
    meta_model,
    read_checkpoint_part,
    read_safetensors,
)
from ling_rl.models.ling_config import ModelFolderError
from tests.learner.helpers import leave, random_batch


def test_parts_cover_the_checkpoint_once_and_hold_one_layer(tiny_dir: Path) -> None:
    """Reading part by part gives exactly the full read, and each layer part holds that layer only."""
    model = meta_model(tiny_dir)
    full = from_hf_weights(read_safetensors(tiny_dir), model, str(tiny_dir))
    seen: dict[str, torch.Tensor] = {}
    for part in checkpoint_parts(model):
        state = read_checkpoint_part(tiny_dir, model, part)
        assert state, f"part {part!r} is empty"
        assert not set(state) & set(seen)
        if part:
            assert all(name.startswith(part) for name in state)
        seen.update(state)
    assert set(seen) == set(full)
    assert all(torch.equal(seen[k], full[k]) for k in full)
    assert len(checkpoint_parts(model)) == model.config.num_hidden_layers + model.config.num_nextn_predict_layers + 1


def test_check_checkpoint_reads_headers_and_names_the_problem(tmp_path: Path, tiny_dir: Path) -> None:
    from ling_rl.models.tiny import PRESETS

    check_checkpoint(tiny_dir, meta_model(tiny_dir))
    # A folder whose config asks for more experts than its files hold.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    config = (broken / "config.json").read_text()
    n = PRESETS["tiny"].num_experts
    (broken / "config.json").write_text(config.replace(f'"num_experts": {n}', f'"num_experts": {2 * n}'))
    with pytest.raises(ModelFolderError, match="experts"):
        check_checkpoint(broken, meta_model(broken))


def _sections(world: int) -> LearnerSections:
    return learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp32", "micro_batch_tokens": 40, "num_ranks": world, "device": "cpu"},
        "algorithm": {"mismatch": {"type": "none"}, "kl": {"coef": 0.1}},
    }))


def _load(rank: int, world: int, init: str, model_dirs: list[str], out: str) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _sections(world), model_dirs[rank])
    worker.setup(init)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    policy = get_model_state_dict(worker.model, options=options)
    ref = get_model_state_dict(worker.ref_model, options=options)
    logp, _ = worker.old_logprobs(random_batch(1024, seed=1), record_routing=False)
    inv_freq = [layer.attention.rotary.inv_freq.clone() for layer in worker.model.model.layers]
    if rank == 0:
        torch.save({"policy": policy, "ref": ref, "logp": logp, "inv_freq": inv_freq}, out)
    leave(worker)


def test_sharded_load_equals_the_full_load(tmp_path: Path, tiny_dir: Path) -> None:
    """Two ranks load the policy and the KL reference model sharded: their full state dicts equal
    `load_model`'s bit for bit, the RoPE buffers too, and the log-probs equal a plain forward.
    Only rank 0 reads weights: rank 1 is given a folder with the config alone."""
    import shutil

    config_only = tmp_path / "config_only"
    config_only.mkdir()
    for name in ("config.json", "configuration_bailing_moe_v2.py"):
        if (tiny_dir / name).is_file():
            shutil.copy(tiny_dir / name, config_only / name)
    out = tmp_path / "load.pt"
    mp.spawn(_load, args=(2, f"file://{tmp_path}/pg", [str(tiny_dir), str(config_only)], str(out)), nprocs=2)
    got = torch.load(out)
    plain = load_model(tiny_dir)
    expected = plain.state_dict()
    for name in ("policy", "ref"):
        assert set(got[name]) == set(expected)
        for key, value in expected.items():
            assert got[name][key].dtype == torch.float32
            assert torch.equal(got[name][key], value), f"{name}: {key}"
    for buf, layer in zip(got["inv_freq"], plain.model.layers, strict=True):
        assert torch.equal(buf, layer.attention.rotary.inv_freq)
    from ling_rl.learner.logprobs import token_logprobs

    batch = random_batch(1024, seed=1)
    with torch.no_grad():
        logits = plain(batch.input_ids).logits[:, :-1]
    reference = torch.nn.functional.pad(token_logprobs(logits, batch.input_ids[:, 1:]), (1, 0))
    mask = batch.response_mask.bool()
    torch.testing.assert_close(got["logp"][mask], reference[mask], rtol=0, atol=1e-5)


def test_a_bf16_checkpoint_loads_into_fp32_master_weights(tmp_path: Path, tiny_dir: Path) -> None:
    """Ling releases store bf16: rank 0 reads (and broadcasts) the bf16 tensors, the sharded fp32
    parameters hold them exactly, as `load_model` does. One in-process gloo rank."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from ling_rl.learner.loading import build_sharded
    from ling_rl.models.hf_io import save_model

    plain = load_model(tiny_dir)
    bf16_dir = save_model(plain, tmp_path / "bf16", state={k: v.to(torch.bfloat16) for k, v in plain.state_dict().items()})
    expected = load_model(bf16_dir).state_dict()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = build_sharded(bf16_dir, torch.device("cpu"), MixedPrecisionPolicy())
        got = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    finally:
        dist.destroy_process_group()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == torch.float32 and torch.equal(got[key], value), key


def test_tied_embeddings_load_sharded_and_stay_tied(tmp_path: Path) -> None:
    """A config with tie_word_embeddings (no Ling release ties them, other BailingMoeV2 checkpoints
    may): the sharded model equals `load_model`'s, its lm_head is the embedding parameter, and a
    step's update of one is the update of the other. One in-process gloo rank."""
    from dataclasses import replace

    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from ling_rl.learner.loading import build_sharded
    from ling_rl.models.hf_io import save_model
    from ling_rl.models.tiny import TINY, build_tiny_model

    tied_dir = save_model(build_tiny_model(replace(TINY, tie_word_embeddings=True), seed=0), tmp_path / "tied")
    plain = load_model(tied_dir)
    ids = torch.randint(10, 1024, (2, 9))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = build_sharded(tied_dir, torch.device("cpu"), MixedPrecisionPolicy())
        assert model.lm_head.weight is model.model.word_embeddings.weight
        got = {k: v.clone() for k, v in  # on one CPU rank these can share the parameters' storage
               get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)).items()}
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=0, atol=1e-5)
        model(ids).logits.square().mean().backward()
        torch.optim.SGD(model.parameters(), lr=1.0).step()
        after = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    finally:
        dist.destroy_process_group()
    expected = plain.state_dict()
    for key, value in expected.items():
        if key != "lm_head.weight":  # the tied head is the embedding; the state dict may omit it
            assert torch.equal(got[key], value), key
    assert not torch.equal(after["model.word_embeddings.weight"], expected["model.word_embeddings.weight"])
    if "lm_head.weight" in after:
        assert torch.equal(after["lm_head.weight"], after["model.word_embeddings.weight"])
