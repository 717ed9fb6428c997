"""The FSDP2 learner on an `hf` model (tiny Qwen3 and Qwen3-MoE, 2 gloo ranks, fp32): the sharded load
equals transformers' own `from_pretrained` bit for bit, the learner's log-probs (packed
micro-batches, the default) equal transformers' own forward, a training step with activation
checkpointing moves the weights, and the learner's export loads back in transformers; with an
untied LM head and with one tied to the embeddings (as Qwen3-0.6B and Llama 3.2 have)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.driver.session import learner_sections
from ling_rl.models.tiny import init_tiny
from tests.learner.helpers import leave, random_batch


def _sections(world: int, arch: str):
    return learner_sections(parse_recipe({
        "model": {"tiny": arch}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp32", "micro_batch_tokens": 40, "num_ranks": world, "device": "cpu",
                    "activation_checkpointing": True, "lr": 1e-2},
        "algorithm": {"mismatch": {"type": "none"}},
    }))


def _run(rank: int, world: int, init: str, model_dir: str, out: str, export_dir: str, arch: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _sections(world, arch), model_dir)
    worker.setup(init)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    loaded = get_model_state_dict(worker.model, options=options)
    batch = random_batch(1024, seed=1)
    logp, _ = worker.old_logprobs(batch, record_routing=False)
    metrics = worker.train_step(batch)
    trained = get_model_state_dict(worker.model, options=options)
    worker.export_hf(export_dir, model_dir)
    if rank == 0:
        torch.save({"loaded": loaded, "logp": logp, "metrics": metrics, "trained": trained}, out)
    leave(worker)


@pytest.mark.parametrize("arch, tied", [("qwen3", False), ("qwen3", True), ("qwen3_moe", False)])
def test_learner_on_tiny_hf_models(tmp_path: Path, arch: str, tied: bool) -> None:
    import transformers

    from ling_rl.learner.logprobs import token_logprobs
    from ling_rl.models.hf_backend import HFBackend
    from ling_rl.models.tiny_hf import build_tiny_hf

    model_dir = init_tiny(tmp_path / arch, preset=arch, seed=0)
    if tied:
        model_dir = HFBackend().save(build_tiny_hf("qwen3", seed=1, tie_word_embeddings=True), tmp_path / "tied",
                                     tokenizer_dir=model_dir)
    out, export_dir = tmp_path / "out.pt", tmp_path / "export"
    mp.spawn(_run, args=(2, f"file://{tmp_path}/pg", str(model_dir), str(out), str(export_dir), arch), nprocs=2)
    got = torch.load(out)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    expected = theirs.state_dict()
    assert set(got["loaded"]) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got["loaded"][key], value), key

    batch = random_batch(1024, seed=1)
    with torch.no_grad():
        logits = theirs(batch.input_ids).logits[:, :-1]
    reference = torch.nn.functional.pad(token_logprobs(logits, batch.input_ids[:, 1:]), (1, 0))
    mask = batch.response_mask.bool()
    torch.testing.assert_close(got["logp"][mask], reference[mask], rtol=0, atol=1e-6)

    metrics = got["metrics"]
    assert metrics["skipped"] == 0.0 and torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
    changed = [k for k in expected if not torch.equal(got["trained"][k], expected[k])]
    assert len(changed) == len(expected), "every weight should move with lr 1e-2"
    if tied:  # one parameter: trained once, still the embedding's
        assert torch.equal(got["trained"]["lm_head.weight"], got["trained"]["model.embed_tokens.weight"])

    exported = transformers.AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=torch.float32)
    for key, value in exported.state_dict().items():
        assert torch.equal(value, got["trained"][key]), key
    assert transformers.AutoTokenizer.from_pretrained(str(export_dir)).eos_token == "<|endoftext|>"
