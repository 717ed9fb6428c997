"""The model a memory plan is made for, from its config.json alone: one entry per architecture family.

    model = describe(json.load(open("config.json")), source="config.json")   # a PlanModel
    model.is_moe_layer(3), model.num_experts_per_tok, model.head_dim       # what plan.py reads

`ARCHITECTURES` maps config.json's `architectures` entry to a function from the config dict to a
`PlanModel`: the shapes the planner's arithmetic needs (widths per decoder layer, which layers are
MoE, biases, norms, tied head) and how the backend that trains it computes (router input in fp32,
attention mask of packed micro-batches). Registered: BailingMoeV2ForCausalLM (the `ling` backend,
through `LingConfig`), and for the `hf` backend (transformers' modeling code, 5.19)
Qwen3ForCausalLM, LlamaForCausalLM (dense) and Qwen3MoeForCausalLM. A config key that is missing
takes the default of transformers' configuration class of that architecture, as the `hf` backend
would; the widths have no default (a config without them is an error naming the key and file).
No torch: the plan is arithmetic on these numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ling_rl.models.ling_config import ARCHITECTURE, MODEL_TYPE, LingConfig, ModelFolderError
from ling_rl.registry import Registry


@dataclass(frozen=True)
class PlanModel:
    """What `ling_rl.commands.plan` needs of a model (parameters, activations, KV cache, routes)."""

    architecture: str
    """config.json's architecture, e.g. `Qwen3ForCausalLM`."""
    backend: str
    """The model backend that trains it (`ling_rl.models.backend`: `ling` or `hf`)."""
    model_type: str | None
    """config.json's `model_type` (the backend's features can depend on it)."""
    source: str
    """Where the config came from (a config.json path, or `model.tiny=NAME`): named in errors."""
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    """Trunk decoder layers (MTP layers not included)."""
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    """The SwiGLU width of the dense decoder layers."""
    moe_layers: frozenset[int] = frozenset()
    """Trunk layers whose MLP is a mixture of experts (MTP layers always are)."""
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_intermediate_size: int = 0
    """Width of the shared expert of a MoE layer; 0: none."""
    num_nextn_predict_layers: int = 0
    """MTP layers after the trunk (Ling only)."""
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    """A bias on attention's output projection."""
    mlp_bias: bool = False
    """Biases in the dense MLPs and the shared expert (routed experts have none)."""
    qk_norm: bool = False
    """Per-head RMSNorm of queries and keys (Qwen3, Ling)."""
    fp32_router: bool = False
    """The router casts its input to fp32 (Ling): with a bf16 compute dtype that copy is kept for backward."""
    expert_padding: bool = False
    """The expert kernel may pad every expert to the busiest one (Ling's bmm kernel on CPU or in fp32)."""
    masked_attention: bool = False
    """A packed micro-batch attends through a [T, T] mask (transformers' SDPA path): SDPA keeps its
    compute-dtype copy per layer, and the KV heads are repeated to the query heads (no GQA with a
    mask). False: each packed sequence is attended on its own, without a mask (Ling)."""

    @property
    def moe_layer_count(self) -> int:
        return len(self.moe_layers)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Decoder layer `layer_idx` (>= num_hidden_layers: an MTP layer) has a MoE MLP."""
        return layer_idx in self.moe_layers or layer_idx >= self.num_hidden_layers


ArchitectureEntry = Callable[[dict[str, Any], str], PlanModel]

ARCHITECTURES: Registry[ArchitectureEntry] = Registry("plan architecture")
"""config.json's `architectures` entry -> its `PlanModel` from the config dict and its source."""


def describe(data: dict[str, Any], source: str) -> PlanModel:
    """The plan's model of a config.json dict (`source`: its path, for errors). Raises
    `ModelFolderError` naming the architecture, the file and the architectures planned."""
    archs = data.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES] if isinstance(archs, list) else []
    if not known:
        raise ModelFolderError(f"{source}: architectures={archs!r} has no memory plan; ling-rl plan knows "
                               f"{', '.join(ARCHITECTURES.names())}")
    return ARCHITECTURES.get(known[0])(data, source)


def ling_model(cfg: LingConfig, source: str = "LingConfig") -> PlanModel:
    """A Ling (BailingMoeV2) model's plan description: dense first `first_k_dense_replace` layers,
    MoE after (and the MTP layers), a shared expert, an fp32 router input."""
    return PlanModel(
        architecture=ARCHITECTURE, backend="ling", model_type=MODEL_TYPE, source=source,
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
        moe_layers=frozenset(i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)),
        num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        moe_intermediate_size=cfg.moe_intermediate_size,
        shared_intermediate_size=cfg.shared_intermediate_size if cfg.num_shared_experts else 0,
        num_nextn_predict_layers=cfg.num_nextn_predict_layers, tie_word_embeddings=cfg.tie_word_embeddings,
        qkv_bias=cfg.use_bias or cfg.use_qkv_bias, out_bias=cfg.use_bias, mlp_bias=cfg.use_bias,
        qk_norm=cfg.use_qk_norm, fp32_router=cfg.router_dtype == "fp32", expert_padding=True)


@ARCHITECTURES.register(ARCHITECTURE)
def _bailing_moe_v2(data: dict[str, Any], source: str) -> PlanModel:
    return ling_model(LingConfig.from_hf_dict(data, source=source), source)


# --- Hugging Face architectures (the `hf` backend) ---------------------------------------------------


def _int(data: dict[str, Any], source: str, key: str, default: int | None = None) -> int:
    """`data[key]` as a positive integer (`default` when absent; no default: the key is required)."""
    value = data.get(key)
    value = default if value is None else value  # a null in config.json is transformers' default too
    if value is None:
        raise ModelFolderError(f"{source}: missing required key {key}")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelFolderError(f"{source}: {key}={value!r} must be a positive integer")
    return value


def _hf_model(data: dict[str, Any], source: str, architecture: str, *, head_dim_default: int | None,
              kv_heads_default: int | None, qk_norm: bool, mlp_bias: bool,
              moe_layers: frozenset[int] = frozenset(), **moe: int) -> PlanModel:
    """The fields every `hf` decoder-only model shares: GQA attention (q, k, v, o projections with
    `attention_bias`), RMSNorms, SwiGLU MLPs, an untied or tied head."""
    hidden = _int(data, source, "hidden_size")
    heads = _int(data, source, "num_attention_heads")
    kv_heads = _int(data, source, "num_key_value_heads", kv_heads_default or heads)
    if heads % kv_heads:
        raise ModelFolderError(f"{source}: num_key_value_heads={kv_heads} must divide num_attention_heads={heads}")
    return PlanModel(
        architecture=architecture, backend="hf", model_type=data.get("model_type"), source=source,
        vocab_size=_int(data, source, "vocab_size"), hidden_size=hidden,
        num_hidden_layers=_int(data, source, "num_hidden_layers"), num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=_int(data, source, "head_dim", head_dim_default or hidden // heads),
        intermediate_size=_int(data, source, "intermediate_size"), moe_layers=moe_layers,
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
        qkv_bias=bool(data.get("attention_bias", False)), out_bias=bool(data.get("attention_bias", False)),
        mlp_bias=mlp_bias, qk_norm=qk_norm, masked_attention=True, **moe)


@ARCHITECTURES.register("Qwen3ForCausalLM")
def _qwen3(data: dict[str, Any], source: str) -> PlanModel:
    # Qwen3Config: head_dim 128 and 32 KV heads when absent (not hidden / heads, nor the query heads);
    # q_norm and k_norm on the head dim.
    return _hf_model(data, source, "Qwen3ForCausalLM", head_dim_default=128, kv_heads_default=32,
                     qk_norm=True, mlp_bias=False)


@ARCHITECTURES.register("LlamaForCausalLM")
def _llama(data: dict[str, Any], source: str) -> PlanModel:
    # LlamaConfig: head_dim hidden / heads when absent; `mlp_bias` on gate, up and down.
    return _hf_model(data, source, "LlamaForCausalLM", head_dim_default=None, kv_heads_default=None,
                     qk_norm=False, mlp_bias=bool(data.get("mlp_bias", False)))


@ARCHITECTURES.register("Qwen3MoeForCausalLM")
def _qwen3_moe(data: dict[str, Any], source: str) -> PlanModel:
    # Qwen3MoeDecoderLayer: layer i is MoE unless listed in mlp_only_layers, when (i + 1) is a
    # multiple of decoder_sparse_step; no shared expert; router [E, H] without bias, softmax in fp32.
    # Defaults of Qwen3MoeConfig: 4 KV heads, head_dim hidden / heads (the attention's getattr).
    layers = _int(data, source, "num_hidden_layers")
    step = _int(data, source, "decoder_sparse_step", 1)
    dense = set(data.get("mlp_only_layers") or [])
    # transformers 5 writes `num_experts` as `num_local_experts` (its attribute_map); hub configs have `num_experts`.
    experts = _int(data, source, "num_experts", data.get("num_local_experts"))
    top_k = _int(data, source, "num_experts_per_tok")
    if top_k > experts:
        raise ModelFolderError(f"{source}: num_experts_per_tok={top_k} exceeds num_experts={experts}")
    moe = frozenset(i for i in range(layers) if i not in dense and (i + 1) % step == 0)
    return _hf_model(data, source, "Qwen3MoeForCausalLM", head_dim_default=None, kv_heads_default=4,
                     qk_norm=True, mlp_bias=False, moe_layers=moe, num_experts=experts, num_experts_per_tok=top_k,
                     moe_intermediate_size=_int(data, source, "moe_intermediate_size"))
