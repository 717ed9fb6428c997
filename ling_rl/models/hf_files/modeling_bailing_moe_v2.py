"""BailingMoeV2 (Ling 2.0) for `transformers`, written by ling-rl next to exported weights so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

loads a ling-rl checkpoint (and `generate` works, with a KV cache). Self-contained on purpose: this
file travels inside exported folders and must not import ling-rl. It mirrors
`ling_rl/models/ling_moe.py` (same math, same Hugging Face weight names, routed experts stored one
module per expert: model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight).

Not covered: the MTP layers (kept in `mtp.safetensors`, outside the weight index, so transformers
never sees them; they only matter for training), training-time routing replay, and attention
backends other than SDPA. Inference only in spirit: it is differentiable, but ling-rl trains with
its own model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_bailing_moe_v2 import BailingMoeV2Config


class BailingMoeV2RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotary_dim(config: BailingMoeV2Config) -> int:
    return int(config.head_dim * config.partial_rotary_factor)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """NeoX-style RoPE on the first `rotary_dim` channels; x [B, heads, T, D], positions [B, T].
    Frequencies are computed here rather than kept in a buffer: transformers builds models on the
    meta device, where a non-persistent buffer would never be filled."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=x.device) / rotary_dim))
    freqs = positions[:, None, :, None].float() * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    x1, x2 = rot.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    return torch.cat((rotated, rest), dim=-1)


class BailingMoeV2Attention(nn.Module):
    def __init__(self, config: BailingMoeV2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.rotary_dim, self.theta = _rotary_dim(config), config.rope_theta
        qkv_out = (self.n_heads + 2 * self.n_kv) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, qkv_out, bias=config.use_bias or config.use_qkv_bias)
        self.dense = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=config.use_bias)
        self.use_qk_norm = config.use_qk_norm
        if config.use_qk_norm:
            self.query_layernorm = BailingMoeV2RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = BailingMoeV2RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cache: Cache | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.query_key_value(x).split(
            [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv, self.head_dim)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q = apply_rope(q.transpose(1, 2), positions, self.rotary_dim, self.theta)
        k = apply_rope(k.transpose(1, 2), positions, self.rotary_dim, self.theta)
        v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
        return self.dense(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class BailingMoeV2MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class BailingMoeV2Gate(nn.Module):
    """Sigmoid (or softmax) router; the expert bias steers selection only; grouped top-k."""

    def __init__(self, config: BailingMoeV2Config) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts) if config.moe_router_enable_expert_bias else None)
        self.top_k, self.n_group, self.topk_group = config.num_experts_per_tok, config.n_group, config.topk_group
        self.score_function, self.norm_topk_prob = config.score_function, config.norm_topk_prob
        self.scaling = config.routed_scaling_factor
        self.fp32 = config.router_dtype == "fp32"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ids [N, top_k] and their weights [N, top_k] for tokens x [N, H]."""
        logits = F.linear(x.float(), self.weight.float()) if self.fp32 else F.linear(x, self.weight)
        scores = logits.sigmoid() if self.score_function == "sigmoid" else logits.softmax(-1)
        with torch.no_grad():
            choice = scores if self.expert_bias is None else scores + self.expert_bias
            if self.n_group > 1:
                n, e = choice.shape
                grouped = choice.view(n, self.n_group, e // self.n_group)
                if self.expert_bias is not None:
                    group_score = grouped.topk(2, dim=-1).values.sum(-1)
                else:
                    group_score = grouped.max(-1).values
                keep = torch.zeros_like(group_score, dtype=torch.bool)
                keep.scatter_(1, group_score.topk(self.topk_group, dim=-1).indices, True)
                choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(n, e)
            ids = choice.topk(self.top_k, dim=-1).indices
        w = scores.gather(1, ids)
        if self.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return ids, w * self.scaling


class BailingMoeV2SparseMoeBlock(nn.Module):
    def __init__(self, config: BailingMoeV2Config) -> None:
        super().__init__()
        self.gate = BailingMoeV2Gate(config)
        self.experts = nn.ModuleList([
            BailingMoeV2MLP(config.hidden_size, config.moe_intermediate_size, config.use_bias)
            for _ in range(config.num_experts)])
        # One MLP as wide as all shared experts together, as vLLM and ling-rl build it.
        shared = (config.moe_shared_expert_intermediate_size or config.moe_intermediate_size) * config.num_shared_experts
        self.shared_experts = (BailingMoeV2MLP(config.hidden_size, shared, config.use_bias)
                               if config.num_shared_experts else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        ids, weights = self.gate(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):  # a loop over experts, each on the tokens routed to it
            token, slot = (ids == e).nonzero(as_tuple=True)
            if len(token):
                out = out.index_add(0, token, expert(flat[token]) * weights[token, slot, None].to(flat.dtype))
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape)


class BailingMoeV2DecoderLayer(nn.Module):
    def __init__(self, config: BailingMoeV2Config, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = BailingMoeV2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = BailingMoeV2Attention(config, layer_idx)
        self.post_attention_layernorm = BailingMoeV2RMSNorm(config.hidden_size, config.rms_norm_eps)
        is_moe = config.num_experts is not None and layer_idx >= config.first_k_dense_replace
        self.mlp = (BailingMoeV2SparseMoeBlock(config) if is_moe
                    else BailingMoeV2MLP(config.hidden_size, config.intermediate_size, config.use_bias))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), positions, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class BailingMoeV2PreTrainedModel(PreTrainedModel):
    config_class = BailingMoeV2Config
    base_model_prefix = "model"
    _no_split_modules = ["BailingMoeV2DecoderLayer"]
    _supports_sdpa = True
    # MTP weights are not part of this class (see the module docstring).
    _keys_to_ignore_on_load_unexpected = [r"model\.layers\.\d+\.(enorm|hnorm|eh_proj|final_layernorm)"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, BailingMoeV2RMSNorm):
            module.weight.data.fill_(1.0)
        elif isinstance(module, BailingMoeV2Gate):
            module.weight.data.normal_(0.0, std)
            if module.expert_bias is not None:
                module.expert_bias.data.zero_()


class BailingMoeV2Model(BailingMoeV2PreTrainedModel):
    def __init__(self, config: BailingMoeV2Config) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([BailingMoeV2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = BailingMoeV2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: Cache | None = None,
                use_cache: bool = False, **kwargs: object) -> BaseModelOutputWithPast:
        # Extra kwargs (e.g. from trainers calling the backbone directly) are not used by this model.
        b, t = input_ids.shape
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(t, device=input_ids.device) + past).expand(b, t)
        # Boolean mask [B, 1, T, past+T]: causal, minus padded keys; every query keeps itself so
        # that rows of pure padding never softmax over nothing (NaN).
        q_idx = torch.arange(t, device=input_ids.device)[:, None] + past
        k_idx = torch.arange(past + t, device=input_ids.device)[None, :]
        mask = (k_idx <= q_idx)[None, None].expand(b, 1, t, past + t)
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, : past + t].bool()
        mask = mask | (k_idx == q_idx)[None, None]
        x = self.word_embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, position_ids, mask, past_key_values if use_cache else None)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), past_key_values=past_key_values)


class BailingMoeV2ForCausalLM(BailingMoeV2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: BailingMoeV2Config) -> None:
        super().__init__(config)
        self.model = BailingMoeV2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: Cache | None = None,
                labels: torch.Tensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, **kwargs: object) -> CausalLMOutputWithPast:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache)
        hidden, cache = out.last_hidden_state, out.past_key_values
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)
