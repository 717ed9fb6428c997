"""The learner's weights as the engines want them, one decoder layer at a time, in buckets.

    for bucket in buckets(gather_layers(model, torch.bfloat16), bucket_bytes=512 << 20):
        ship(bucket)   # {Hugging Face name: full tensor}; drop it before the next one

`gather_layers` materialises the full (unsharded) tensors of one layer group at a time: on an
FSDP2 model each DTensor's `full_tensor()` is an all-gather, so every rank must iterate the same
groups in the same order (ranks other than the sender just drop what they get). It yields the
same names and values as the backend's `inference_weights(model, full_state_dict)` (Hugging Face
names: `ling_rl.models.backend`), without ever holding the whole
model. `buckets` packs the stream into dicts of about `bucket_bytes`, so a consumer holds at most
one layer plus one bucket. Device-agnostic: tensors stay on the model's device (CUDA on GPU).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ling_rl.models.backend import backend_of

_ROUTER = re.compile(r"\.mlp\.gate\.(weight|expert_bias)$")
"""The router's weight and expert bias: vLLM's BailingMoeV2 keeps them in fp32 (router_dtype
fp32) whatever the engine dtype, so they travel in fp32 to lose nothing on the way."""


def layer_groups(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(state-dict prefix, module) of every part the engines load, in checkpoint order: the
    embeddings, each trunk decoder layer, the final norm, the LM head (MTP layers are not
    inference weights; a tied LM head is the embedding). The model's backend knows them."""
    return backend_of(model).weight_groups(model)


def wire_dtype(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """The dtype `name` travels in: `dtype` for floating tensors, fp32 for the router."""
    if not tensor.is_floating_point():
        return tensor.dtype
    return torch.float32 if _ROUTER.search(name) else dtype


def gather_layers(model: nn.Module, dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
    """Per layer group, its inference weights under Hugging Face names, full and cast to the wire
    dtype. A collective on a sharded model: every rank must consume the whole iterator."""
    backend = backend_of(model)
    for prefix, module in layer_groups(model):
        full = {}
        for name, tensor in module.state_dict(prefix=prefix).items():
            tensor = tensor.detach()
            if hasattr(tensor, "full_tensor"):  # an FSDP2 shard (DTensor): all-gather this one tensor
                tensor = tensor.full_tensor()
            full[name] = tensor.to(wire_dtype(name, tensor, dtype))
        yield backend.inference_weights(model, full)


def weight_metadata(model: nn.Module, dtype: torch.dtype) -> list[tuple[str, str, list[int]]]:
    """(name, dtype name, full shape) of every tensor `gather_layers` yields, in its order,
    without gathering anything (DTensors know their global shape)."""
    out = []
    backend = backend_of(model)
    for prefix, module in layer_groups(model):
        meta = {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in module.state_dict(prefix=prefix).items()}
        meta = {name: t.to(wire_dtype(name, t, dtype)) for name, t in meta.items()}
        out += [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in backend.inference_weights(model, meta).items()]
    return out


def buckets(groups: Iterable[dict[str, torch.Tensor]], bucket_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors of `groups`, in order, packed into dicts of at most `bucket_bytes` (a tensor
    larger than that travels alone)."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for group in groups:
        for name, tensor in group.items():
            n = tensor.numel() * tensor.element_size()
            if bucket and size + n > bucket_bytes:
                yield bucket
                bucket, size = {}, 0
            bucket[name] = tensor
            size += n
        del group  # the next layer is gathered only once this one is in a bucket
    if bucket:
        yield bucket


def nbytes(weights: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())
