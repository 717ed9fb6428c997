"""Router adapters: routing replay (R2/R3) on `hf` MoE models, one adapter per `config.model_type`.

transformers' MoE blocks choose their experts inside the router module (Qwen3-MoE: `mlp.gate`, a
`Qwen3MoeTopKRouter` returning logits, top-k weights and top-k expert ids). An adapter replaces
each such router, in place, by a module that keeps its parameter (`mlp.gate.weight`: checkpoint,
weight sync and export names are unchanged) and computes the same thing, except that it can be
given the experts to use and records the experts it used (`RoutingState`):

    state = RoutingState()
    routers = ROUTER_ADAPTERS.get("qwen3_moe").install(decoder, state)
    with state.forward(given=routes_or_None):     # one [N, top_k] per MoE layer, NO_ROUTE = own choice
        hidden = decoder(...)
    state.chosen                                  # the experts each MoE layer used, [N, top_k]

As on the Ling model (`ling_rl.models.ling_moe.MoE`), the gate weights are the router's softmax
probabilities of the experts used, given or chosen (renormalised when `norm_topk_prob`), so the
router is trained through them either way. Without given experts the adapter's output equals
transformers' router bit for bit.

Activation checkpointing: transformers recomputes each decoder layer in backward through
`torch.utils.checkpoint` (non-reentrant). `RoutingState.checkpoint_contexts` is that call's
`context_fn`: the first run records each router's experts on a tape of its own and the
recomputation replays them, so a token goes to the same experts in both runs even if the scores
came out different in the last bit (what `_checkpointed_layer` does on the Ling model).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ling_rl.registry import Registry


@dataclass(frozen=True)
class RoutingLayout:
    """Where a model routes: the decoder-layer indices of its MoE layers (vLLM's routed-experts
    axis counts every decoder layer), experts per token and experts per MoE layer."""

    moe_layers: list[int]
    top_k: int
    num_experts: int


class RoutingState:
    """Shared by one model's router adapters: the experts the current forward is given, the ones
    each MoE layer used, and the tape of the checkpointed layer running now."""

    def __init__(self) -> None:
        self.given: list[torch.Tensor] | None = None
        self.chosen: dict[int, torch.Tensor] = {}
        self._tape: list[torch.Tensor] | None = None
        self._replaying = False

    @contextlib.contextmanager
    def forward(self, given: list[torch.Tensor] | None) -> Iterator[None]:
        """One forward of the model: `given` (per MoE layer [N, top_k], or None) replayed."""
        self.given, self.chosen = given, {}
        try:
            yield
        finally:
            self.given = None

    def experts(self, index: int, own: torch.Tensor) -> torch.Tensor:
        """The experts MoE layer `index` uses: on a recomputation the first run's, else the given
        ones where given (a token whose ids are negative, e.g. a row's last token, keeps `own`, the
        router's choice), else `own`."""
        if self._replaying:
            assert self._tape, "activation checkpointing recomputed more routers than its first run had"
            return self._tape.pop(0)
        ids = own
        if self.given is not None:
            given = self.given[index]
            if given.shape != own.shape:
                raise ValueError(f"routing replay: MoE layer {index} was given experts of shape {tuple(given.shape)}, "
                                 f"expected {tuple(own.shape)} (tokens, top_k)")
            # No host sync to find out whether any token lacks a route.
            ids = torch.where((given < 0).any(-1, keepdim=True), own, given.to(own.dtype))
        if self._tape is not None:
            self._tape.append(ids)
        self.chosen[index] = ids
        return ids

    def checkpoint_contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """`torch.utils.checkpoint`'s `context_fn`: a tape for this checkpointed call, recorded by
        the first run and replayed by the recomputation."""
        tape: list[torch.Tensor] = []

        @contextlib.contextmanager
        def use(replaying: bool) -> Iterator[None]:
            saved = self._tape, self._replaying
            self._tape, self._replaying = (list(tape) if replaying else tape), replaying
            try:
                yield
            finally:
                self._tape, self._replaying = saved

        return use(False), use(True)


class RouterAdapter(ABC):
    """What routing replay needs of one `hf` MoE architecture."""

    @abstractmethod
    def install(self, decoder: nn.Module, state: RoutingState) -> list[nn.Module]:
        """Replace the routers of `decoder` (transformers' `XModel`) by replay-capable ones sharing
        `state`; returns them, one per MoE layer in order."""

    @abstractmethod
    def layout(self, config) -> RoutingLayout:
        """The routing layout of a transformers `config` of this architecture."""


class Qwen3MoeReplayRouter(nn.Module):
    """`Qwen3MoeTopKRouter` (transformers 5.19) that can be given its experts: softmax over the
    experts in fp32, top-k, the chosen probabilities renormalised when `norm_topk_prob`."""

    def __init__(self, router: nn.Module, index: int, state: RoutingState) -> None:
        super().__init__()
        self.weight = router.weight  # the same parameter: the state-dict name stays `mlp.gate.weight`
        self.top_k, self.num_experts = router.top_k, router.num_experts
        self.norm_topk_prob, self.hidden_dim = router.norm_topk_prob, router.hidden_dim
        self.index = index
        self._state = state

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        logits = F.linear(hidden_states, self.weight)
        probs = torch.softmax(logits, dtype=torch.float, dim=-1)
        with torch.no_grad():  # selection carries no gradient; the weights below do
            own = probs.topk(self.top_k, dim=-1).indices
        ids = self._state.experts(self.index, own)
        weights = probs.gather(1, ids)  # at `own`: the same values as transformers' topk values
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(logits.dtype), ids


class Qwen3MoeAdapter(RouterAdapter):
    def install(self, decoder: nn.Module, state: RoutingState) -> list[nn.Module]:
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

        routers = []
        for layer in decoder.layers:
            gate = getattr(layer.mlp, "gate", None)
            if isinstance(gate, Qwen3MoeTopKRouter):  # a MoE layer (a dense one's MLP has a gate_proj)
                layer.mlp.gate = Qwen3MoeReplayRouter(gate, len(routers), state)
                routers.append(layer.mlp.gate)
        return routers

    def layout(self, config) -> RoutingLayout:
        moe = [i for i in range(config.num_hidden_layers)
               if i not in config.mlp_only_layers and config.num_experts > 0
               and (i + 1) % config.decoder_sparse_step == 0]  # Qwen3MoeDecoderLayer's own rule
        return RoutingLayout(moe_layers=moe, top_k=config.num_experts_per_tok, num_experts=config.num_experts)


ROUTER_ADAPTERS: Registry[RouterAdapter] = Registry("hf router adapter")
"""`config.model_type` -> its router adapter; an `hf` architecture without one has no routing replay."""
ROUTER_ADAPTERS.add("qwen3_moe", Qwen3MoeAdapter())
