"""The Ling 2.0 MoE transformer (BailingMoeV2 architecture) in plain PyTorch.

Per layer: RMSNorm -> GQA attention (fused QKV, per-head QK RMSNorm, partial NeoX RoPE) ->
RMSNorm -> MLP, where the first `first_k_dense_replace` layers use a dense SwiGLU MLP and the
rest a MoE: sigmoid router scores, an expert bias that only steers selection (aux-loss-free
balancing), grouped top-k (best `topk_group` of `n_group` groups, a group scored by the sum of
its two best biased scores), top-k weights from the unbiased scores, renormalised and scaled by
`routed_scaling_factor`, plus an always-on shared expert. Optional MTP layers predict token t+2
from the final hidden state at t and the embedding of token t+1.

Routed experts are stored stacked ([E, I, H]) so expert compute is one grouped GEMM per projection;
`ling_rl.models.hf_io` maps to and from the per-expert Hugging Face weight names.

Inputs are right-padded [B, T] batches: with causal attention, padding after a sequence never
influences its valid positions. Or packed: several sequences laid end to end in one row [1, N],
`seq_lens` their lengths and `positions` restarting at 0 in each; attention is then causal within
each sequence and never crosses into another (`Attention.forward`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ling_rl.models.ling_config import LingConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """NeoX-style RoPE on the first `rotary_dim` channels of each head."""

    def __init__(self, rotary_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rotary_dim = rotary_dim

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x: [B, heads, T, D]; positions: [B, T]
        freqs = positions[:, None, :, None].float() * self.inv_freq  # [B, 1, T, rot/2]
        cos, sin = freqs.cos(), freqs.sin()
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        x1, x2 = rot.float().chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
        return torch.cat((rotated, rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LingConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv_out = (self.n_heads + 2 * self.n_kv) * self.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, qkv_out, bias=cfg.use_bias or cfg.use_qkv_bias)
        self.dense = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.use_bias)
        self.use_qk_norm = cfg.use_qk_norm
        if cfg.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.rotary_dim, cfg.rope_theta)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, seq_lens: list[int] | None = None) -> torch.Tensor:
        """`seq_lens`: the input is packed (see the module docstring). Each sequence gets its own
        causal SDPA call on its slice: the same kernel as on a padded row of that length, and no
        compute on the (seq x other seqs) blocks a block-causal mask over the whole pack would
        spend and then discard."""
        b, t, _ = x.shape
        q, k, v = self.query_key_value(x).split(
            [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1
        )
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv, self.head_dim)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q = self.rotary(q.transpose(1, 2), positions)
        k = self.rotary(k.transpose(1, 2), positions)
        v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        gqa = self.n_kv != self.n_heads
        if seq_lens is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = torch.cat([F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
                             for qs, ks, vs in zip(q.split(seq_lens, 2), k.split(seq_lens, 2), v.split(seq_lens, 2),
                                                   strict=True)], dim=2)
        return self.dense(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inner: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Chooses `top_k` experts per token and their weights (see the module docstring)."""

    def __init__(self, cfg: LingConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        # The bias is learned by load-balancing updates outside of backprop, and frozen during RL:
        # a buffer keeps it out of the optimizer and still in the state dict.
        self.register_buffer(
            "expert_bias", torch.zeros(cfg.num_experts) if cfg.moe_router_enable_expert_bias else None
        )
        self.top_k, self.n_group, self.topk_group = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        self.score_function = cfg.score_function
        self.norm_topk_prob = cfg.norm_topk_prob
        self.scaling = cfg.routed_scaling_factor
        self.fp32 = cfg.router_dtype == "fp32"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores [N, E] of tokens `x` [N, H]. The module's forward (not a separately named
        method): the learner shards the router as its own FSDP2 unit that keeps its weight in
        fp32 (`ling_rl.learner.loading`), and only a forward call gathers it."""
        return self.scores(x)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        logits = F.linear(x.float(), w.float()) if self.fp32 else F.linear(x, w)
        return logits.sigmoid() if self.score_function == "sigmoid" else logits.softmax(-1)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Expert ids [N, top_k] from router scores [N, E]; no gradient flows through selection."""
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
            return choice.topk(self.top_k, dim=-1).indices

    def weights(self, scores: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        w = scores.gather(1, expert_ids)
        if self.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return w * self.scaling


class Experts(nn.Module):
    """E routed SwiGLU experts with stacked weights, computed as grouped GEMMs over the tokens
    sorted by expert (never a loop over tokens or experts).

    Two kernels compute the same thing: `torch._grouped_mm` (offsets from the per-expert counts, no
    host sync) where it is fast, i.e. CUDA in bf16, and otherwise one matmul per expert over its
    contiguous slice of the sorted tokens (`looped_ffn`). On CPU `_grouped_mm` is correct (also in
    backward) but measured 2-6x slower than a padded `bmm` at the tiny/small shapes, and the padded
    `bmm` (each expert padded to the largest count) computes on the padding; the per-expert loop
    does not (it replaced the padded `bmm`; bench/RESULTS.md has the step profiles before and after).

    `group_align`: the grouped GEMM gets each expert's rows padded (with zero rows) to a multiple
    of this; 1 = no padding. The float8 grouped GEMM (`ling_rl.learner.fp8`) needs 16.
    """

    def __init__(self, cfg: LingConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_proj = nn.Parameter(torch.empty(e, i, h))
        self.up_proj = nn.Parameter(torch.empty(e, i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))
        self.group_align = 1

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n, k = expert_ids.shape
        flat_ids = expert_ids.reshape(-1)
        order = flat_ids.argsort(stable=True)
        token_of = order // k
        counts = torch.bincount(flat_ids, minlength=self.gate_proj.shape[0])
        xs = x[token_of]
        if use_grouped_mm(x):
            ys = grouped_ffn(xs, counts, self.gate_proj, self.up_proj, self.down_proj, self.group_align)
        else:
            ys = looped_ffn(xs, counts, self.gate_proj, self.up_proj, self.down_proj)
        ys = ys * weights.reshape(-1)[order, None].to(ys.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, ys.to(x.dtype))


def use_grouped_mm(x: torch.Tensor) -> bool:
    """`torch._grouped_mm` on CUDA needs bf16 operands; elsewhere the per-expert loop is faster."""
    return x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")


def grouped_ffn(xs: torch.Tensor, counts: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                down: torch.Tensor, align: int = 1) -> torch.Tensor:
    """SwiGLU of expert-sorted tokens `xs` [N, H] (`counts[e]` rows per expert) by grouped GEMM,
    each group padded to a multiple of `align` rows when `align > 1`."""
    rows = None
    if align > 1:
        xs, rows, offs = _align_groups(xs, counts, align)
    else:
        offs = counts.cumsum(0).to(torch.int32)
    h = F.silu(torch._grouped_mm(xs, gate.transpose(1, 2), offs=offs)) * torch._grouped_mm(xs, up.transpose(1, 2), offs=offs)
    out = torch._grouped_mm(h, down.transpose(1, 2), offs=offs)
    return out if rows is None else out[rows]


def _align_groups(xs: torch.Tensor, counts: torch.Tensor, align: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`xs` copied into zero rows so that every group starts at a multiple of `align`; returns the
    padded rows, where each row of `xs` went, and the group end offsets (int32).

    The padded size is a bound known without reading `counts` on the host (no device sync):
    round_up(N, align) + E * align. The slack goes to the last group, so every row belongs to a
    group (zero rows give zero outputs) and every group size is a multiple of `align`."""
    n, e = xs.shape[0], counts.shape[0]
    size = -(-n // align) * align + e * align
    padded = (counts + align - 1) // align * align
    starts = padded.cumsum(0) - padded
    firsts = counts.cumsum(0) - counts
    expert = torch.repeat_interleave(torch.arange(e, device=xs.device), counts, output_size=n)
    rows = starts[expert] + torch.arange(n, device=xs.device) - firsts[expert]
    out = xs.new_zeros(size, xs.shape[1]).index_copy(0, rows, xs)
    offs = padded.cumsum(0)
    offs[-1] = size
    return out, rows, offs.to(torch.int32)


def looped_ffn(xs: torch.Tensor, counts: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
               down: torch.Tensor) -> torch.Tensor:
    """The same as `grouped_ffn` with one SwiGLU per expert over its rows of `xs` (rows are sorted by
    expert, so each expert's tokens are one contiguous slice: no padding, no gather). The counts are
    read on the host once per call; a loop of E small matmuls costs microseconds per expert."""
    parts = []
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            x = xs[start : start + n]
            parts.append(F.linear(F.silu(F.linear(x, gate[e])) * F.linear(x, up[e]), down[e]))
            start += n
    return torch.cat(parts) if parts else xs.new_zeros(0, down.shape[1])


class MoE(nn.Module):
    def __init__(self, cfg: LingConfig) -> None:
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg)
        self.shared_experts = (
            SwiGLU(cfg.hidden_size, cfg.shared_intermediate_size, cfg.use_bias) if cfg.num_shared_experts else None
        )

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        scores = self.gate(flat)
        if expert_ids is None:
            expert_ids = self.gate.select(scores)
        elif expert_ids.shape != (flat.shape[0], self.gate.top_k):
            raise ValueError(f"replayed expert ids have shape {tuple(expert_ids.shape)}, "
                             f"expected {(flat.shape[0], self.gate.top_k)}")
        else:
            # Replay. A token without a recorded route (ids < 0: e.g. a row's last token, which the
            # engine never ran) goes where the router sends it; no host sync to find out whether any.
            missing = (expert_ids < 0).any(-1, keepdim=True)
            expert_ids = torch.where(missing, self.gate.select(scores), expert_ids)
        # The gate weights are the router's scores of the experts used, replayed or not: the router
        # gets its gradient through them either way.
        out = self.experts(flat, expert_ids, self.gate.weights(scores, expert_ids))
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape), expert_ids


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LingConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.is_moe = cfg.is_moe_layer(layer_idx)
        self.mlp: nn.Module = MoE(cfg) if self.is_moe else SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.use_bias)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, expert_ids: torch.Tensor | None = None,
        seq_lens: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.attention(self.input_layernorm(x), positions, seq_lens)
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            out, expert_ids = self.mlp(h, expert_ids)
            return x + out, expert_ids
        return x + self.mlp(h), None


class MTPLayer(DecoderLayer):
    """Multi-token prediction: combines the trunk's hidden state at t with the embedding of token
    t+1 and predicts token t+2 through the shared lm_head."""

    def __init__(self, cfg: LingConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(  # type: ignore[override]
        self, hidden: torch.Tensor, next_embeds: torch.Tensor, positions: torch.Tensor,
        seq_lens: list[int] | None = None,
    ) -> torch.Tensor:
        """The MTP step, as the module's own forward: called as `mtp(...)`, FSDP2's hooks gather
        this layer's parameters (a separately named method would bypass them)."""
        x = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        x, _ = super().forward(x, positions, seq_lens=seq_lens)
        return self.final_layernorm(x)


Head = Callable[[torch.Tensor, torch.Tensor, int], Any]
"""`head(hidden, lm_head_weight, depth)`, computed inside the forward in place of the logits: the
trunk's final hidden states [B, T, H] at depth 0, MTP depth d's [B, T-d, H] at depth d."""


@dataclass
class LingOutput:
    logits: torch.Tensor | None
    """[B, T, V] next-token logits (None when a `head` was given)."""
    hidden: torch.Tensor
    """[B, T, H] final hidden states (after the last norm)."""
    routed_experts: list[torch.Tensor] | None = None
    """Per MoE layer, the expert ids [B*T, top_k] chosen for each token (routing replay)."""
    mtp_logits: list[torch.Tensor] | None = None
    """Per MTP depth d (1-based), logits [B, T-d, V] at position t predicting token t+1+d."""
    head: Any = None
    """The `head`'s result on the trunk's hidden states, when one was given."""
    mtp_head: list[Any] | None = None
    """Per MTP depth, the `head`'s result on its hidden states, when one was given."""


class LingModel(nn.Module):
    """Embeddings + decoder stack + final norm (the `model.` prefix of the checkpoint)."""

    def __init__(self, cfg: LingConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            [DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
            + [MTPLayer(cfg, cfg.num_hidden_layers + d) for d in range(cfg.num_nextn_predict_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.num_trunk_layers = cfg.num_hidden_layers


class LingForCausalLM(nn.Module):
    backend_name = "ling"
    """The model backend that builds and loads this model (`ling_rl.models.backend`)."""

    def __init__(self, cfg: LingConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LingModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.word_embeddings.weight

    @property
    def trunk_layers(self) -> list[DecoderLayer]:
        return list(self.model.layers[: self.model.num_trunk_layers])

    @property
    def mtp_layers(self) -> list[MTPLayer]:
        return list(self.model.layers[self.model.num_trunk_layers :])  # type: ignore[arg-type]

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        routed_experts: list[torch.Tensor] | None = None,
        return_routed_experts: bool = False,
        with_mtp: bool = False,
        head: Head | None = None,
        checkpoint_layers: bool = False,
        seq_lens: list[int] | None = None,
    ) -> LingOutput:
        """Run the model on right-padded `input_ids` [B, T], or on packed ones ([1, N], with
        `seq_lens` and `positions`: see the module docstring).

        `routed_experts` (one [B*T, top_k] tensor per MoE layer) replays a recorded routing instead
        of selecting experts (a token whose ids are negative is routed by the router: see
        `ling_rl.routing`); `return_routed_experts` returns the routing used.

        `head`: computed from the final hidden states and the lm_head weight instead of the full
        logits (`logits` and `mtp_logits` stay None; see `Head`), e.g. chunked log-probs that never
        hold [B, T, V] logits. It runs inside the forward because FSDP2 gathers the root module's
        parameters (the lm_head among them) for the root's forward.

        `checkpoint_layers`: activation checkpointing of each trunk decoder layer while gradients
        are recorded (see `_checkpointed_layer`).
        """
        b, t = input_ids.shape
        if positions is None:
            positions = torch.arange(t, device=input_ids.device).expand(b, t)
        embeds = self.model.word_embeddings(input_ids)
        x = embeds
        moe_layers = [layer for layer in self.trunk_layers if layer.is_moe]
        if routed_experts is not None and len(routed_experts) != len(moe_layers):
            raise ValueError(f"routing replay got {len(routed_experts)} layers, the model has {len(moe_layers)} MoE layers")
        chosen: list[torch.Tensor] = []
        replay = iter(routed_experts or [])
        recompute = checkpoint_layers and torch.is_grad_enabled()
        for layer in self.trunk_layers:
            ids = next(replay) if (routed_experts is not None and layer.is_moe) else None
            x, ids = (_checkpointed_layer(layer, x, positions, ids, seq_lens) if recompute
                      else layer(x, positions, ids, seq_lens))
            if ids is not None:
                chosen.append(ids)
        hidden = self.model.norm(x)
        logits = self.lm_head(hidden) if head is None else None
        out = LingOutput(logits=logits, hidden=hidden,
                         routed_experts=chosen if return_routed_experts else None)
        if head is not None:
            out.head = head(hidden, self.lm_head.weight, 0)
        if with_mtp and self.mtp_layers:
            mtp_out = []
            h = hidden
            for d, mtp in enumerate(self.mtp_layers, start=1):
                # Position t combines h_t with the embedding of token t+d to predict token t+d+1, for
                # t < T-d. Every depth runs on all T positions, the last d right padding (zero
                # embeddings, positions counted on): causal attention keeps them from the real ones,
                # and they are cut before the head. So the MTP layers' GEMMs see the trunk's token
                # count, which float8 training needs to be a multiple of 16 (`LearnerWorker.token_multiple`).
                # Packed, the same holds per sequence: its last d positions see the next sequence's
                # embeddings and positions, and attention keeps those from its real ones.
                ahead = torch.cat([positions[:, d:], positions[:, -1:] + torch.arange(1, d + 1, device=positions.device)], 1)
                h = mtp(h, F.pad(embeds[:, d:], (0, 0, 0, d)), ahead, seq_lens)
                real = h[:, : t - d]
                mtp_out.append(self.lm_head(real) if head is None else head(real, self.lm_head.weight, d))
            if head is None:
                out.mtp_logits = mtp_out
            else:
                out.mtp_head = mtp_out
        return out

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random initialisation (normal(0, initializer_range) for matrices, ones for norms)."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight") or name.endswith("enorm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)
        for name, buf in self.named_buffers():
            if name.endswith("expert_bias"):
                buf.normal_(0.0, 0.01, generator=generator)


def _checkpointed_layer(layer: DecoderLayer, x: torch.Tensor, positions: torch.Tensor,
                        expert_ids: torch.Tensor | None,
                        seq_lens: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`layer(x, positions, expert_ids)` keeping only its input for backward, where it runs again
    (non-reentrant `torch.utils.checkpoint`). The recomputation replays the expert choice of the
    first run, so a MoE layer sends every token to the same experts even if its router's scores
    came out different in the last bit, and the routing is recorded once. The layer is called as a
    module in both runs: FSDP2 lets a recomputation through its hooks (the layer's parameters are
    already gathered for backward then). The model has no randomness to replay (no dropout)."""
    routing = [expert_ids]

    def run(h: torch.Tensor) -> torch.Tensor:
        out, used = layer(h, positions, routing[0], seq_lens)
        routing[0] = used
        return out

    out = checkpoint(run, x, use_reentrant=False, preserve_rng_state=False)
    return out, routing[0]
