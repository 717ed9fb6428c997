"""FP8 training of the learner's large linears through torchao.

`apply_fp8` swaps selected `nn.Linear` modules for torchao `Float8Linear` before FSDP2 wraps the
model. The module filter (`fp8_filter`) converts:

- attention `query_key_value` and `dense`,
- dense-layer MLP and shared-expert `gate_proj` / `up_proj` / `down_proj`,
- the MTP layers' linears of the same kinds (and `eh_proj`),

and keeps in high precision:

- `lm_head` (the logits feed the log-probs of the policy loss directly; fp8 error there is
  error in every importance ratio) and the embeddings (not a GEMM),
- the router (`Router` computes `F.linear` on its weight itself, in fp32 by design: expert choice
  is discrete and sensitive to tiny score changes),
- the routed experts (stacked [E, I, H] weights run through grouped GEMMs; torchao's float8
  grouped GEMM is GPU-only in 0.18, so they stay in the bf16/fp32 of the rest of the model),
- any linear with a dimension below `min_dim` or not divisible by 16 (the float8 GEMM needs
  multiples of 16; small GEMMs gain less than the casts cost).

On a machine without CUDA the float8 GEMMs are emulated (`emulate: auto`): the casts, scales and
rounding are real, so the loss shows fp8's numerics, but nothing is faster. CI uses it to test the
wiring; the real `torch._scaled_mm` kernels run on GPUs with float8 support.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ling_rl.learner.config import FP8Config

_CONVERTED_SUFFIXES = (
    "attention.query_key_value", "attention.dense",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    "shared_experts.gate_proj", "shared_experts.up_proj", "shared_experts.down_proj",
    "eh_proj",
)


def fp8_filter(module: nn.Module, fqn: str, min_dim: int) -> bool:
    """Whether the module at `fqn` becomes a `Float8Linear` (see the module docstring)."""
    if not isinstance(module, nn.Linear) or not fqn.endswith(_CONVERTED_SUFFIXES):
        return False
    dims = (module.in_features, module.out_features)
    return all(d >= min_dim and d % 16 == 0 for d in dims)


def float8_config(cfg: FP8Config) -> object:
    """The torchao `Float8LinearConfig` for `cfg` (emulation resolved against this machine)."""
    from torchao.float8 import Float8LinearConfig

    emulate = not torch.cuda.is_available() if cfg.emulate == "auto" else bool(cfg.emulate)
    # The recipe fixes the scaling; emulation and float8 all-gather are per-run choices.
    return dataclasses.replace(Float8LinearConfig.from_recipe_name(cfg.scaling), emulate=emulate,
                               enable_fsdp_float8_all_gather=cfg.fsdp_float8_all_gather)


def apply_fp8(model: nn.Module, cfg: FP8Config) -> list[str]:
    """Convert the selected linears of `model` in place; returns the converted module names."""
    from torchao.float8 import convert_to_float8_training

    converted: list[str] = []

    def keep(module: nn.Module, fqn: str) -> bool:
        ok = fp8_filter(module, fqn, cfg.min_dim)
        if ok:
            converted.append(fqn)
        return ok

    convert_to_float8_training(model, module_filter_fn=keep, config=float8_config(cfg))
    model.register_state_dict_post_hook(_plain_weights)
    return converted


def _plain_weights(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """With float8 all-gather, torchao wraps the converted weights in a tensor subclass that only
    the float8 GEMM understands; state dicts (export, weight sync, checkpoints) get the plain
    high-precision tensor inside, which safetensors and inference engines can use. Loading a
    plain tensor back copies into the wrapped one, so checkpoints still resume."""
    from torch.distributed.tensor import DTensor
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    for key, value in state_dict.items():
        if isinstance(value, DTensor) and isinstance(value._local_tensor, WeightWithDynamicFloat8CastTensor):
            state_dict[key] = DTensor.from_local(value._local_tensor._tensor, value.device_mesh, value.placements,
                                                 shape=value.shape, stride=value.stride())
        elif isinstance(value, WeightWithDynamicFloat8CastTensor):
            state_dict[key] = value._tensor
