"""Tiny Ling-architecture models and tokenizers, built locally and deterministically from a seed.

Used by the tests and the CPU quickstart: nothing is downloaded. The tokenizer is a byte-level
BPE (the same kind Ling 2.0 uses) trained on a generated corpus of arithmetic word problems and
reasoning text, so that numbers, punctuation and think/answer tags tokenize realistically.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ling_rl.models.ling_config import LingConfig
from ling_rl.models.hf_io import check_replaceable, save_model
from ling_rl.models.ling_moe import LingForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>"]
EOS, PAD = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]
CHAT_TEMPLATE = (
    # With `tools`, the system turn (the given one, else a new one) lists them one line each and says
    # how to call one: the tiny model's prompts are short. Without tools and tool calls, every message
    # is `<|im_start|>role\ncontent<|im_end|>\n` (a `tool` message too, as its own turn).
    "{% if tools %}<|im_start|>system\n"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n{% endif %}"
    "Tools:\n"
    "{% for t in tools %}{% set f = t['function'] if t['function'] is defined else t %}"
    "{% set params = f['parameters']['properties'] if f['parameters'] is defined and f['parameters']['properties'] is defined else {} %}"
    "{{ f['name'] }}("
    "{% for arg, p in params.items() %}{{ ', ' if not loop.first }}{{ arg }}: "
    "{% if p['type'] is string %}{{ p['type'] }}{% elif p['type'] is defined %}{{ p['type'] | join('|') }}{% else %}any{% endif %}"
    "{% endfor %}): {{ f['description'] | default('') }}\n"
    "{% endfor %}"
    "To call a tool, write <tool_call>{\"name\": <tool name>, \"arguments\": {<argument>: <value>, ...}}</tool_call>"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if not (tools and loop.first and m['role'] == 'system') %}"
    "<|im_start|>{{ m['role'] }}\n"
    # An assistant turn's calls follow its text, one compact JSON object each (the hermes convention).
    "{% if m['tool_calls'] is defined and m['tool_calls'] %}{{ m['content'] or '' }}"
    "{% for c in m['tool_calls'] %}{% set f = c['function'] if c['function'] is defined else c %}"
    "<tool_call>{\"name\": {{ f['name'] | tojson }}, \"arguments\": "
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}}</tool_call>"
    "{% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}"
    "<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The ChatML-style template of the tiny tokenizer, with tool support (TRL's `tools` / tool messages):
no special tokens beyond SPECIAL_TOKENS, so tool calls are plain text the hermes parser reads."""

_NAMES = ["Ann", "Bob", "Carla", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "June"]
_ITEMS = ["apples", "books", "coins", "marbles", "pens", "stickers", "cards", "eggs", "shells", "stamps"]
_WORDS = ("the a of and to in is was for on that with as it he she they has had have then so first next "
          "finally total each more less left gives buys sells finds loses how many does now answer step "
          "compute add subtract multiply divide result therefore let we check because sum difference product").split()


def _corpus(seed: int, n: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b, c = rng.randint(0, 999), rng.randint(1, 99), rng.randint(1, 9)
        who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        lines.append(f"{who} has {a} {item}, buys {b} more and gives away {c}. How many {item} does {who} have now?")
        lines.append(f"First, {a} + {b} = {a + b}. Then {a + b} - {c} = {a + b - c}. The answer is {a + b - c}.")
        lines.append(f"Compute {a} * {c} - {b}: {a} * {c} = {a * c}; {a * c} - {b} = {a * c - b}.")
        lines.append(f"<think>{a} / {c} = {a / c:.2f}</think><answer>{a + c}</answer>")
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 15))) + rng.choice([".", "!", "?", ";", ":", ","]))
    return lines


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> Tokenizer:
    """A byte-level BPE tokenizer trained on a generated corpus (same seed -> same tokenizer)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS, "pad_token": PAD, "bos_token": None, "unk_token": None,
        "model_max_length": 4096, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS, "pad_token": PAD}, indent=2))


TINY = LingConfig(
    vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, moe_intermediate_size=64, num_experts=8, num_experts_per_tok=2,
    num_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=1, routed_scaling_factor=2.5,
    partial_rotary_factor=0.5, rope_theta=10000.0, max_position_embeddings=2048, num_nextn_predict_layers=1,
)
"""The default tiny model: 2 layers (1 dense + 1 MoE with 8 experts, top-2, 2 groups), 1 MTP layer."""

PRESETS: dict[str, LingConfig] = {
    "tiny": TINY,
    "small": replace(TINY, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, moe_intermediate_size=128, num_experts=16, n_group=4, topk_group=2),
}


def build_tiny_model(cfg: LingConfig = TINY, seed: int = 0) -> LingForCausalLM:
    torch.manual_seed(seed)
    model = LingForCausalLM(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


TINY_ARCHS = ("ling", "qwen3", "llama", "qwen3_moe")
"""Architectures `init-tiny --arch` builds: the Ling MoE (presets tiny, small) or a Hugging Face model."""


def tiny_names() -> list[str]:
    """Every `model.tiny` name: the Ling presets, then the Hugging Face architectures."""
    from ling_rl.models.tiny_hf import HF_TINY

    return [*PRESETS, *HF_TINY]


def tiny_backend(name: str) -> str:
    """The model backend of the tiny model `name` (`ling_rl.models.backend`)."""
    from ling_rl.models.tiny_hf import HF_TINY

    tiny_vocab_size(name)  # an unknown name is an error here too
    return "hf" if name in HF_TINY else "ling"


def tiny_model_type(name: str) -> str:
    """config.json's `model_type` of the tiny model `name`."""
    from ling_rl.models.ling_config import MODEL_TYPE
    from ling_rl.models.tiny_hf import HF_TINY

    tiny_vocab_size(name)  # an unknown name is an error here too
    return HF_TINY[name]().model_type if name in HF_TINY else MODEL_TYPE


def tiny_vocab_size(name: str) -> int:
    from ling_rl.models.tiny_hf import HF_TINY, VOCAB_SIZE

    if name not in PRESETS and name not in HF_TINY:
        raise ValueError(f"unknown tiny preset {name!r}; available: {', '.join(tiny_names())}")
    return PRESETS[name].vocab_size if name in PRESETS else VOCAB_SIZE


def init_tiny(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a tiny model + tokenizer folder that loads in vLLM and in ling-rl: a Ling MoE (`preset`
    tiny or small) or a Hugging Face architecture (`preset` qwen3, llama or qwen3_moe: `tiny_hf`)."""
    from ling_rl.models.tiny_hf import HF_TINY, save_tiny_hf

    vocab = tiny_vocab_size(preset)
    out = Path(out_dir)
    check_replaceable(out)  # a folder of the user's is refused before any work
    tok = build_tokenizer(vocab, seed)
    ids = {t: tok.token_to_id(t) for t in (EOS, PAD)}
    with tempfile.TemporaryDirectory(prefix="ling-rl-tokenizer-") as tok_dir:
        save_tokenizer(tok, Path(tok_dir))
        if preset in HF_TINY:
            return save_tiny_hf(preset, out, tok_dir, seed, eos_token_id=ids[EOS], pad_token_id=ids[PAD])
        cfg = replace(PRESETS[preset], eos_token_id=ids[EOS], pad_token_id=ids[PAD], bos_token_id=None)
        save_model(build_tiny_model(cfg, seed), out, tokenizer_dir=tok_dir)
    return out
