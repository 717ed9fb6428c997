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
- the routed experts, unless `routed_experts_fp8` applies (below),
- any linear with a dimension below `min_dim` or not divisible by 16 (the float8 GEMM needs
  multiples of 16; small GEMMs gain less than the casts cost).

On a machine without CUDA the float8 GEMMs are emulated (`emulate: auto`): the casts, scales and
rounding are real, so the loss shows fp8's numerics, but nothing is faster. CI uses it to test the
wiring; the real `torch._scaled_mm` kernels run on GPUs with float8 support.

Routed experts (`learner.fp8.routed_experts`): torchao's MoE float8 training
(`torchao.prototype.moe_training`, `Float8TrainingOpConfig` through `quantize_`) wraps the stacked
expert weights in a tensor subclass whose `torch._grouped_mm` runs a rowwise-scaled float8 grouped
GEMM (`torch._scaled_grouped_mm`, CUDA sm90+ only; no emulation). Our [E, I, H] weights, transposed
in `grouped_ffn`, are the column-major [E, H, I] operand it expects; it needs each expert's token
group padded to a multiple of 16 rows (`Experts.group_align`). Written for CUDA, not run on a GPU
yet: `bench/gpu_check.sh` runs it.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from ling_rl.learner.config import FP8Config

log = logging.getLogger(__name__)

# The float8 grouped GEMM needs every group's row count to be a multiple of 16.
FP8_GROUP_ALIGN = 16

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


def routed_experts_fp8_unsupported(device: torch.device) -> str | None:
    """Why the routed experts cannot train in float8 on `device` here, or None when they can."""
    if device.type != "cuda":
        return f"the float8 grouped GEMM (torch._scaled_grouped_mm) needs a CUDA device, the learner is on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < (9, 0):
        return f"the float8 grouped GEMM needs compute capability 9.0+ (H100), this GPU has {capability[0]}.{capability[1]}"
    if not hasattr(torch, "_scaled_grouped_mm"):
        return f"torch {torch.__version__} has no torch._scaled_grouped_mm"
    try:
        _moe_float8_config()
    except ImportError as e:
        return f"the installed torchao has no MoE float8 training ({e})"
    return None


def use_routed_experts_fp8(cfg: FP8Config, device: torch.device) -> bool:
    """Resolve `learner.fp8.routed_experts` on this machine: `true` without support is an error,
    `auto` uses it when supported and logs which."""
    reason = routed_experts_fp8_unsupported(device)
    if cfg.routed_experts is True and reason is not None:
        raise ValueError(f"learner.fp8.routed_experts: true, but {reason}; set it to auto or false")
    use = reason is None and cfg.routed_experts is not False
    if cfg.routed_experts == "auto":
        log.info("learner.fp8.routed_experts: auto -> %s", "float8 grouped GEMM" if use else f"high precision ({reason})")
    return use


def _moe_float8_config() -> object:
    """torchao's config for rowwise float8 grouped GEMMs (0.18 name; the older releases that had
    the MoE path called it `MoETrainingConfig`)."""
    try:
        from torchao.prototype.moe_training.config import Float8TrainingOpConfig
    except ImportError:
        from torchao.prototype.moe_training.conversion_utils import MoETrainingConfig

        return MoETrainingConfig()
    return Float8TrainingOpConfig()


def convert_routed_experts(model: nn.Module) -> list[str]:
    """Wrap every `Experts` module's stacked weights for torchao's float8 grouped GEMM (in place,
    before `fully_shard`) and pad its token groups as that GEMM needs; returns the module names."""
    from torchao.quantization import quantize_

    from ling_rl.models.ling_moe import Experts

    names = [fqn for fqn, m in model.named_modules() if isinstance(m, Experts)]
    quantize_(model, _moe_float8_config(), filter_fn=lambda m, fqn: isinstance(m, Experts))
    for fqn in names:
        model.get_submodule(fqn).group_align = FP8_GROUP_ALIGN
    return names


def apply_fp8(model: nn.Module, cfg: FP8Config, device: torch.device | None = None) -> list[str]:
    """Convert the selected linears of `model` in place, and its routed experts where
    `use_routed_experts_fp8` says so for `device` (default: CUDA when present); returns the
    converted module names."""
    from torchao.float8 import convert_to_float8_training

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    converted: list[str] = []

    def keep(module: nn.Module, fqn: str) -> bool:
        ok = fp8_filter(module, fqn, cfg.min_dim)
        if ok:
            converted.append(fqn)
        return ok

    convert_to_float8_training(model, module_filter_fn=keep, config=float8_config(cfg))
    if use_routed_experts_fp8(cfg, device):
        converted += convert_routed_experts(model)
    # On each converted module, not the root: the weight sync takes each layer's own state dict
    # (`ling_rl.weightsync.stream.gather_layers`), which runs the hooks of that layer's modules only.
    for fqn in converted:
        model.get_submodule(fqn).register_state_dict_post_hook(_plain_weights)
    return converted


def _plain_weights(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """With float8 all-gather, torchao wraps the converted weights in a tensor subclass that only
    the float8 GEMM understands; state dicts (export, weight sync, checkpoints) get the plain
    high-precision tensor inside, which safetensors and inference engines can use. Loading a
    plain tensor back copies into the wrapped one, so checkpoints still resume. Registered on a
    module, it runs in every state dict that module is part of (its own, a layer's, the root's),
    and unwraps that module's entries (`prefix`)."""
    from torch.distributed.tensor import DTensor

    for key, value in [(k, v) for k, v in state_dict.items() if k.startswith(prefix)]:
        if isinstance(value, DTensor):
            local = _unwrapped(value._local_tensor)
            if local is not value._local_tensor:
                state_dict[key] = DTensor.from_local(local, value.device_mesh, value.placements,
                                                     shape=value.shape, stride=value.stride())
        else:
            state_dict[key] = _unwrapped(value)


def _unwrapped(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor inside torchao's float8 weight wrappers (linears: float8 all-gather;
    routed experts: the grouped-GEMM wrapper); other tensors as they are."""
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    if isinstance(t, WeightWithDynamicFloat8CastTensor):
        return t._tensor
    if type(t).__module__.startswith("torchao.prototype.moe_training") and hasattr(t, "_data"):
        return t._data
    return t
