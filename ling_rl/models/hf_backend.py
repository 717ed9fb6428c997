"""The `hf` model backend: any Hugging Face causal LM, built by transformers' own modeling code.

    model = HFBackend().meta_model(folder)   # AutoModelForCausalLM.from_config on the meta device

`HFCausalLM` keeps the two children of transformers' `XForCausalLM` (`model`: embeddings, decoder
layers, final norm; `lm_head`), so its state-dict names are the checkpoint's names unchanged (what
vLLM loads and what the weight sync streams), and calls them the way the learner calls the Ling
model (`ling_rl.models.ling_moe.LingForCausalLM.forward`): the final hidden states go to the
learner's `head` (chunked log-probs from the `lm_head` weight), never through full logits.

Packed micro-batches need no extra code: with no attention mask, no cache and `position_ids`
restarting at 0 at each sequence, transformers' mask builder (`masking_utils.
find_packed_sequence_indices`, transformers 5.19) makes attention block-causal per sequence
(tests/models/test_hf_backend.py checks packed == padded). Activation checkpointing uses
transformers' own per-layer checkpointing (non-reentrant).

Checkpoint names that differ from the module's (Qwen3-MoE's fused experts) go through a layout
(`ling_rl.models.hf_layouts`). Routing replay (R2/R3) goes through a router adapter per model type
(`ling_rl.models.hf_routers`: Qwen3-MoE). Tested here (CPU, fp32): Qwen3, Llama, Qwen3-MoE. Not
supported yet (refused by the recipe check): routing replay on an architecture without a router
adapter, MTP, float8 training, `learner.compile`, the expert-bias update.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from torch import nn

from ling_rl.models.backend import Feature, ModelBackend
from ling_rl.models.hf_layouts import layout_of
from ling_rl.models.hf_routers import ROUTER_ADAPTERS, RoutingLayout, RoutingState
from ling_rl.models.hf_io import safetensors_files, write_model_folder
from ling_rl.models.ling_config import ModelFolderError
from ling_rl.models.ling_moe import LingOutput

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class HFCausalLM(nn.Module):
    """A transformers causal LM's decoder (`model`) and `lm_head`, with the learner's forward."""

    backend_name = "hf"
    """The model backend that builds and loads this model (`ling_rl.models.backend`)."""

    def __init__(self, causal_lm: nn.Module) -> None:
        super().__init__()
        self.config = causal_lm.config
        self.model = causal_lm.model
        self.lm_head = causal_lm.lm_head
        # Routing replay: the MoE routers replaced by ones that can be given their experts, for the
        # architectures with a router adapter (`ling_rl.models.hf_routers`); [] otherwise.
        self.routing = RoutingState()
        model_type = self.config.model_type
        self.routers = ROUTER_ADAPTERS.get(model_type).install(self.model, self.routing) \
            if model_type in ROUTER_ADAPTERS else []
        # transformers' own per-layer checkpointing, switched on per forward (`checkpoint_layers`);
        # the recomputation reuses the first run's experts (`RoutingState.checkpoint_contexts`).
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
            "use_reentrant": False, "context_fn": self.routing.checkpoint_contexts})
        self._set_checkpointing(False)

    @property
    def trunk_layers(self) -> list[nn.Module]:
        return list(self.model.layers)

    @property
    def mtp_layers(self) -> list[nn.Module]:
        return []

    def _set_checkpointing(self, on: bool) -> None:
        for layer in self.model.layers:
            layer.gradient_checkpointing = on

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                routed_experts: list[torch.Tensor] | None = None, return_routed_experts: bool = False,
                with_mtp: bool = False, head=None, checkpoint_layers: bool = False,
                seq_lens: list[int] | None = None) -> LingOutput:
        """As `LingForCausalLM.forward`. Packed input ([1, N]) is told by `positions` alone (each
        sequence restarts at 0); `seq_lens` is implied by them. `routed_experts` (one [B*T, top_k]
        tensor per MoE layer, negative ids: the router chooses) and `return_routed_experts` need a
        router adapter (`self.routers`: the recipe check refuses r2/r3 without one)."""
        if (routed_experts is not None or return_routed_experts) and not self.routers:
            raise ValueError(f"routing replay: {type(self.model).__name__} has no router adapter in ling-rl "
                             f"(model_type {self.config.model_type})")
        if routed_experts is not None and len(routed_experts) != len(self.routers):
            raise ValueError(f"routing replay got {len(routed_experts)} layers, the model has {len(self.routers)} MoE layers")
        self._set_checkpointing(checkpoint_layers and torch.is_grad_enabled())
        with self.routing.forward(routed_experts):
            hidden = self.model(input_ids=input_ids, position_ids=positions, use_cache=False).last_hidden_state
            used = [self.routing.chosen[i] for i in range(len(self.routers))] if return_routed_experts else None
        out = LingOutput(logits=None, hidden=hidden, routed_experts=used)
        if head is None:
            out.logits = self.lm_head(hidden)
        else:
            out.head = head(hidden, self.lm_head.weight, 0)
        return out


def _config(folder: str | Path):
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(str(folder))
    except (ValueError, OSError, KeyError) as e:
        raise ModelFolderError(f"{folder}: transformers cannot read its config.json ({e})") from None


class HFBackend(ModelBackend):
    name: ClassVar[str] = "hf"
    supports: ClassVar[frozenset[Feature]] = frozenset()

    def claims(self, architectures: list[str]) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        return any(a in known for a in architectures)

    def check_folder(self, folder: str | Path) -> None:
        _config(folder)

    def meta_model(self, folder: str | Path) -> HFCausalLM:
        return self.meta_model_of(_config(folder))

    def meta_model_of(self, config) -> HFCausalLM:
        """The model of a transformers `config` on the meta device, fp32 parameters, SDPA attention."""
        import transformers

        with torch.device("meta"):
            causal_lm = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                                      attn_implementation="sdpa")
        return HFCausalLM(causal_lm)

    def decoder_layers(self, model: HFCausalLM) -> list[nn.Module]:
        return model.trunk_layers

    def trunk_layers(self, model: HFCausalLM) -> list[nn.Module]:
        return model.trunk_layers

    def mtp_layers(self, model: HFCausalLM) -> list[nn.Module]:
        return []

    def features(self, model_type: str | None) -> frozenset[Feature]:
        # Routing replay where the architecture has a router adapter (`hf_routers`).
        return self.supports | ({"routing_replay"} if model_type in ROUTER_ADAPTERS else frozenset())

    def routers(self, model: HFCausalLM) -> list[nn.Module]:
        return list(model.routers)  # [] for a dense model or an architecture without a router adapter

    def routing_layout(self, folder: str | Path) -> RoutingLayout:
        config = _config(folder)
        if config.model_type not in ROUTER_ADAPTERS:
            return RoutingLayout(moe_layers=[], top_k=0, num_experts=0)
        return ROUTER_ADAPTERS.get(config.model_type).layout(config)

    def fp32_units(self, model: HFCausalLM) -> list[nn.Module]:
        return []

    def checkpoint_parts(self, model: HFCausalLM) -> list[str]:
        return [f"model.layers.{i}." for i in range(len(model.model.layers))] + [""]

    def _expected(self, model: HFCausalLM) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds, under its names, on the meta device (a tied lm_head is
        stored once, as the embedding)."""
        meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in model.state_dict().items()}
        return self.inference_weights(model, meta)

    def _check(self, got: dict[str, tuple[int, ...]], model: HFCausalLM, source: str, partial: bool) -> None:
        expected = self._expected(model)
        for name, shape in got.items():
            if name not in expected:
                raise ModelFolderError(f"{source}: unexpected weight {name!r} (not part of this architecture/config)")
            if tuple(shape) != tuple(expected[name].shape):
                raise ModelFolderError(f"{source}: weight {name!r} has shape {tuple(shape)}, "
                                       f"config expects {tuple(expected[name].shape)}")
        missing = sorted(set(expected) - set(got))
        if missing and not partial:
            shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            raise ModelFolderError(f"{source}: missing weight(s) {shown}")

    def check_checkpoint(self, folder: str | Path, model: HFCausalLM) -> None:
        shapes: dict[str, tuple[int, ...]] = {}
        for path in safetensors_files(Path(folder)):
            with safe_open(str(path), framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        if model.config.tie_word_embeddings:
            shapes.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
        self._check(shapes, model, str(folder), partial=False)

    def read_checkpoint_part(self, folder: str | Path, model: HFCausalLM, part: str) -> dict[str, torch.Tensor]:
        parts = set(self.checkpoint_parts(model))
        out: dict[str, torch.Tensor] = {}
        for path in safetensors_files(Path(folder)):
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    m = _LAYER.match(key)
                    if (m.group(0) if m and m.group(0) in parts else "") == part:
                        out[key] = f.get_tensor(key)
        if model.config.tie_word_embeddings:
            out.pop("lm_head.weight", None)
        self._check({k: tuple(v.shape) for k, v in out.items()}, model, str(folder), partial=True)
        return layout_of(model.config.model_type).from_checkpoint(out)

    def init_computed_buffers(self, model: HFCausalLM, device: str | torch.device) -> None:
        """Rebuild the rotary embeddings (their frequencies are computed, not stored) on `device`;
        any other computed buffer is an architecture this backend does not know how to set up.
        A tied lm_head is made the embedding's parameter again: `to_empty` of an unsharded model
        gives each module its own new tensor (FSDP2's sharded parameters are swapped in place and
        stay shared)."""
        if model.config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
            model.lm_head.weight = model.model.embed_tokens.weight
        stored = set(model.state_dict())
        computed = {name for name, _ in model.named_buffers() if name not in stored}
        for prefix, module in model.named_modules():
            if type(module).__name__.endswith("RotaryEmbedding"):
                with torch.device(device):
                    fresh = type(module)(config=model.config)
                for name, buf in fresh.named_buffers():
                    setattr(module, name, buf)
                    computed.discard(f"{prefix}.{name}" if prefix else name)
        if computed:
            raise ModelFolderError(f"{type(model.model).__name__}: computed buffers {sorted(computed)} have no "
                                   "initialiser in ling-rl's hf backend")

    def weight_groups(self, model: HFCausalLM) -> list[tuple[str, nn.Module]]:
        groups: list[tuple[str, nn.Module]] = [("model.embed_tokens.", model.model.embed_tokens)]
        groups += [(f"model.layers.{i}.", layer) for i, layer in enumerate(model.model.layers)]
        groups.append(("model.norm.", model.model.norm))
        if not model.config.tie_word_embeddings:
            groups.append(("lm_head.", model.lm_head))
        return groups

    def inference_weights(self, model: HFCausalLM, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # The checkpoint's names (`hf_layouts`); a tied lm_head is the embedding's tensor.
        weights = layout_of(model.config.model_type).to_checkpoint(state)
        return {k: v for k, v in weights.items() if not (model.config.tie_word_embeddings and k == "lm_head.weight")}

    def save(self, model: HFCausalLM, folder: str | Path, tokenizer_dir: str | Path | None = None,
             state: dict[str, torch.Tensor] | None = None) -> Path:
        state = state if state is not None else model.state_dict()
        cfg = model.config
        config = cfg.to_dict()
        config["dtype"] = "float32"  # the master weights this writes
        generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
        return write_model_folder(folder, self.inference_weights(model, dict(state)), config, tokenizer_dir, generation)
