"""An exported ling-rl folder loads in `transformers` (`trust_remote_code=True`) and computes the
same logits as the project's model; `generate` works through the KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ling_rl.models.hf_io import load_model


@pytest.fixture(scope="module")
def hf_model(tiny_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, trust_remote_code=True, dtype=torch.float32).eval()


def test_transformers_logits_equal_project_model(hf_model, tiny_dir: Path) -> None:
    assert type(hf_model).__name__ == "BailingMoeV2ForCausalLM"
    ours = load_model(tiny_dir).eval()
    ids = torch.randint(10, 1024, (3, 21), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours(ids).logits
        got = hf_model(ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_generate_with_cache_matches_full_recompute(hf_model) -> None:
    prompt = torch.randint(10, 1024, (2, 7), generator=torch.Generator().manual_seed(1))
    out = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                            pad_token_id=hf_model.config.pad_token_id)
    assert out.shape == (2, 19) and torch.equal(out[:, :7], prompt)
    # Greedy decoding with the KV cache picks, at every step, the argmax of a cache-free forward.
    with torch.no_grad():
        full = hf_model(out, use_cache=False).logits
    eos = hf_model.config.eos_token_id
    for row in range(2):
        for pos in range(7, 19):
            if out[row, pos - 1] == eos:
                break
            assert int(full[row, pos - 1].argmax()) == int(out[row, pos])


@pytest.mark.parametrize("per_expert", [None, 48])
def test_two_shared_experts_load_in_transformers(tmp_path: Path, tiny_dir: Path, per_expert: int | None) -> None:
    """`num_shared_experts: 2` makes the shared MLP twice as wide (as in vLLM and the project's
    model), with or without `moe_shared_expert_intermediate_size`; the shipped modeling file
    builds the same shape and computes the same logits."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from ling_rl.models.hf_io import save_model
    from ling_rl.models.tiny import TINY, build_tiny_model

    cfg = replace(TINY, num_shared_experts=2, moe_shared_expert_intermediate_size=per_expert)
    ours = build_tiny_model(cfg, seed=4).eval()
    folder = save_model(ours, tmp_path / "two-shared", tokenizer_dir=tiny_dir)
    hf = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(10, 1024, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids, use_cache=False).logits, ours(ids).logits, rtol=1e-5, atol=1e-5)
