"""The `ling` model backend: the project's BailingMoeV2 model (`ling_rl.models.ling_moe`) and its
checkpoint I/O (`ling_rl.models.hf_io`). Supports every learner feature."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ling_rl.models import hf_io
from ling_rl.models.backend import Feature, ModelBackend
from ling_rl.models.hf_routers import RoutingLayout
from ling_rl.models.ling_config import ARCHITECTURE, LingConfig
from ling_rl.models.ling_moe import LingForCausalLM


class LingBackend(ModelBackend):
    name: ClassVar[str] = "ling"
    supports: ClassVar[frozenset[Feature]] = frozenset({"routing_replay", "mtp", "fp8", "compile", "expert_bias"})

    def claims(self, architectures: list[str]) -> bool:
        return ARCHITECTURE in architectures

    def check_folder(self, folder: str | Path) -> None:
        LingConfig.from_folder(folder)

    def meta_model(self, folder: str | Path) -> LingForCausalLM:
        return hf_io.meta_model(folder)

    def decoder_layers(self, model: LingForCausalLM) -> list[nn.Module]:
        return list(model.model.layers)

    def trunk_layers(self, model: LingForCausalLM) -> list[nn.Module]:
        return list(model.trunk_layers)

    def mtp_layers(self, model: LingForCausalLM) -> list[nn.Module]:
        return list(model.mtp_layers)

    def routers(self, model: LingForCausalLM) -> list[nn.Module]:
        return [layer.mlp.gate for layer in model.trunk_layers if layer.is_moe]

    def routing_layout(self, folder: str | Path) -> RoutingLayout:
        cfg = LingConfig.from_folder(folder)
        return RoutingLayout(moe_layers=[i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)],
                             top_k=cfg.num_experts_per_tok, num_experts=cfg.num_experts)

    def fp32_units(self, model: LingForCausalLM) -> list[nn.Module]:
        # vLLM routes with fp32 weights and the sync ships them in fp32: a bf16 all-gather would
        # round them before `Router` upcasts.
        return [layer.mlp.gate for layer in model.model.layers if layer.is_moe and layer.mlp.gate.fp32]

    def checkpoint_parts(self, model: LingForCausalLM) -> list[str]:
        return hf_io.checkpoint_parts(model)

    def check_checkpoint(self, folder: str | Path, model: LingForCausalLM) -> None:
        hf_io.check_checkpoint(folder, model)

    def read_checkpoint_part(self, folder: str | Path, model: LingForCausalLM, part: str) -> dict[str, torch.Tensor]:
        return hf_io.read_checkpoint_part(folder, model, part)

    def init_computed_buffers(self, model: LingForCausalLM, device: str | torch.device) -> None:
        hf_io.init_computed_buffers(model, device)

    def weight_groups(self, model: LingForCausalLM) -> list[tuple[str, nn.Module]]:
        # MTP layers are not inference weights; a tied LM head is the embedding.
        groups: list[tuple[str, nn.Module]] = [("model.word_embeddings.", model.model.word_embeddings)]
        groups += [(f"model.layers.{i}.", layer) for i, layer in enumerate(model.trunk_layers)]
        groups.append(("model.norm.", model.model.norm))
        if not model.config.tie_word_embeddings:
            groups.append(("lm_head.", model.lm_head))
        return groups

    def inference_weights(self, model: LingForCausalLM, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return hf_io.inference_weights(state, model.config)

    def save(self, model: LingForCausalLM, folder: str | Path, tokenizer_dir: str | Path | None = None,
             state: dict[str, torch.Tensor] | None = None) -> Path:
        return hf_io.save_model(model, folder, tokenizer_dir=tokenizer_dir, state=state)

    def load(self, folder: str | Path, device: str | torch.device = "cpu") -> LingForCausalLM:
        return hf_io.load_model(folder, device=device)
