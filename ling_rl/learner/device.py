"""Where a learner rank computes: the device as a value, and what follows from it.

    device = resolve_device(cfg.learner.device, rank)   # torch.device("cuda", i) or ("cpu")
    dist.init_process_group(BACKENDS[device.type], ...)  # nccl on CUDA, gloo on CPU
    batch = batch_to(batch, device)

Every other learner function takes tensors that already live on `device` (or creates them with
`device=`); nothing else asks which device it is on. The CUDA side was written for CUDA and has
not been run on a GPU yet (the `gpu`-marked tests exercise it).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from ling_rl.types import TrainBatch

DeviceSetting = Literal["auto", "cpu", "cuda"]

# The collective backend of each device type: NCCL all-reduces need CUDA tensors, gloo CPU ones.
BACKENDS: dict[str, str] = {"cpu": "gloo", "cuda": "nccl"}


class DeviceError(ValueError):
    """The recipe asks for a device this process does not have."""


def resolve_device(setting: DeviceSetting, rank: int) -> torch.device:
    """The device of learner rank `rank` for `learner.device: setting`.

    `auto` is CUDA when this process sees a GPU. Under Ray each rank sees only the GPU(s) of its
    own `num_gpus` (Ray sets CUDA_VISIBLE_DEVICES), so it takes index 0; in a plain multi-process
    run that sees every GPU of the node, rank r takes GPU r modulo their count."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise DeviceError("learner.device is 'cuda', but this learner rank sees no CUDA device "
                          "(torch.cuda.is_available() is false); use 'cpu' or 'auto', or give the ranks "
                          "GPUs with cluster.learner.num_gpus")
    use_cuda = setting == "cuda" or (setting == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    return torch.device("cuda", rank % torch.cuda.device_count())


def batch_to(batch: TrainBatch, device: torch.device, multiple: int = 1) -> TrainBatch:
    """`batch` with every tensor on `device` (the same object's tensors when already there), its
    positions right-padded to a multiple of `multiple` (padding: token 0, outside the response
    mask, so it changes no loss term; with causal attention it never reaches a real position)."""
    extra = -batch.input_ids.shape[1] % multiple

    def move(t: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> [B, T + extra, ...] on `device`, 0 on padding
        t = t.to(device)
        return F.pad(t, (0, 0) * (t.dim() - 2) + (0, extra)) if extra else t

    return batch.map_positions(move)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random state: the CPU generator, and the device's when it is a GPU."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any] | torch.Tensor, device: torch.device) -> None:
    """Restore `rng_state`'s result (a bare tensor: a checkpoint from before the device key, CPU state only)."""
    if isinstance(state, torch.Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
