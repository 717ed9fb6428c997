"""Build a learner model sharded from the start: no rank ever holds the whole model.

    model = build_sharded(model_dir, device, mp_policy, convert=apply_fp8_or_none, backend=backend)

The model's backend (`ling_rl.models.backend`: the native Ling model or a transformers causal LM)
says what to build, which modules are the FSDP2 units and how the checkpoint is read; the steps
are the same for every backend:

1. the model is built on the meta device (structure only, no memory);
2. `convert` runs (FP8: FSDP2 must see the Float8Linears, so before sharding);
3. `fully_shard` each fp32 unit (the Ling MoE routers), each decoder layer, then the root;
   `to_empty` gives each rank memory for its shards only;
4. part by part (a decoder layer, then embeddings / norm / lm_head), rank 0 reads that part's
   tensors from the safetensors and `set_model_state_dict(..., broadcast_from_rank0=True)` sends
   every rank its shards (replicated buffers such as the router expert bias whole);
5. the computed buffers (RoPE frequencies, not stored in checkpoints) are set on every rank.

Peak per rank: its shards of the whole model, plus one part in full (rank 0 reads it; the others
receive one tensor of it at a time). Parameters stay in fp32 (the master weights); FSDP2's mixed
precision policy casts for compute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ling_rl.models.backend import ModelBackend, resolve_backend


def build_sharded(folder: str | Path, device: torch.device, mp_policy: MixedPrecisionPolicy,
                  convert: Callable[[nn.Module], None] | None = None, backend: ModelBackend | None = None) -> nn.Module:
    """The model of `folder`, FSDP2-sharded over the default process group, on `device`, in fp32;
    built by `backend` (default: the one `model.backend: auto` picks for the folder)."""
    backend = backend or resolve_backend(folder)
    model = backend.meta_model(folder)
    if convert is not None:
        convert(model)
    # An explicit mesh of `device`'s type: without one FSDP2 builds its mesh on CUDA whenever the
    # process sees a GPU, and a `learner.device: cpu` rank on a GPU machine would compute on the GPU
    # (seen on an H200: embeddings on cuda:0, RoPE buffers on the CPU).
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # The routers are their own units that keep fp32 for compute (vLLM routes with fp32 weights and
    # the sync ships them in fp32; a bf16 all-gather would round them before `Router` upcasts).
    router_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for unit in backend.fp32_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=router_policy)
    for layer in backend.decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)
    model.to_empty(device=device)
    fill_from_checkpoint(model, backend, folder)
    backend.init_computed_buffers(model, device)
    return model


def fill_from_checkpoint(model: nn.Module, backend: ModelBackend, folder: str | Path) -> None:
    """Fill the (sharded, materialised) `model` from `folder`, one part at a time; collective."""
    rank0 = dist.get_rank() == 0
    if rank0:
        backend.check_checkpoint(folder, model)  # a bad folder fails here whole, before any part is sent
    # strict=False: each call carries one part; the model's other weights keep their values.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    for part in backend.checkpoint_parts(model):
        state = backend.read_checkpoint_part(folder, model, part) if rank0 else {}
        set_model_state_dict(model, state, options=options)
        del state
