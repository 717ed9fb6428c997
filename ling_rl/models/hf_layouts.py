"""Checkpoint layouts of `hf` architectures: the module's parameter names <-> the checkpoint's.

Most transformers models hold their weights under the checkpoint's own names (the identity
layout). Some MoE models fuse their experts in memory while checkpoints, and vLLM's loaders, keep
one tensor per expert: transformers 5 converts them on load (`conversion_mapping.py`, e.g.
Qwen3-MoE's `mlp.experts.gate_up_proj` [E, 2I, H] from `mlp.experts.E.{gate,up}_proj.weight`).
The `hf` backend reads, checks, syncs and saves through a layout, one registered per
`config.model_type` (`LAYOUTS`); a model type without one uses the identity.
"""

from __future__ import annotations

import re

import torch

from ling_rl.registry import Registry


class WeightLayout:
    """The identity layout: parameter names are checkpoint names."""

    def to_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model-named tensors (any subset, meta tensors too) -> checkpoint-named tensors."""
        return dict(state)

    def from_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoint-named tensors (whole layers) -> model-named tensors."""
        return dict(weights)


_FUSED = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")
_PER_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class FusedExperts(WeightLayout):
    """Experts fused in memory (`experts.gate_up_proj` [E, 2I, H]: gate rows then up rows;
    `experts.down_proj` [E, H, I]), one tensor per expert and projection in the checkpoint."""

    def to_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            m = _FUSED.match(name)
            if m is None:
                out[name] = tensor
                continue
            base, kind = m.groups()
            for e in range(tensor.shape[0]):
                if kind == "gate_up_proj":
                    inner = tensor.shape[1] // 2
                    out[f"{base}.{e}.gate_proj.weight"] = tensor[e, :inner]
                    out[f"{base}.{e}.up_proj.weight"] = tensor[e, inner:]
                else:
                    out[f"{base}.{e}.down_proj.weight"] = tensor[e]
        return out

    def from_checkpoint(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
        for name, tensor in weights.items():
            m = _PER_EXPERT.match(name)
            if m is None:
                out[name] = tensor
                continue
            base, e, kind = m.groups()
            experts.setdefault(base, {}).setdefault(kind, {})[int(e)] = tensor
        for base, kinds in experts.items():
            stacked = {kind: torch.stack([per[e] for e in sorted(per)]) for kind, per in kinds.items()}
            out[f"{base}.gate_up_proj"] = torch.cat([stacked["gate_proj"], stacked["up_proj"]], dim=1)
            out[f"{base}.down_proj"] = stacked["down_proj"]
        return out


LAYOUTS: Registry[WeightLayout] = Registry("hf checkpoint layout")
"""`config.model_type` -> its layout, for the model types whose modules do not use the checkpoint's names."""
LAYOUTS.add("qwen3_moe", FusedExperts())

IDENTITY = WeightLayout()


def layout_of(model_type: str) -> WeightLayout:
    return LAYOUTS.get(model_type) if model_type in LAYOUTS else IDENTITY
