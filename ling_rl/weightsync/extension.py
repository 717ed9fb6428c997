"""Weight sync into a running vLLM engine: a worker extension that reloads from safetensors files.

vLLM mixes `WeightReloadExtension` into its worker class (`worker_extension_cls`), and
`LLM.collective_rpc("reload_from_safetensors", args=(paths,))` runs the method in every worker.
Paths cross the rpc, not tensors: tensors fail to pickle through vLLM's rpc on CPU, and files
under /dev/shm keep the transfer a memory copy. The files hold Hugging Face BailingMoeV2 names
(`ling_rl.models.hf_io.inference_weights`), the same names vLLM's loader reads from a checkpoint.
The NCCL path (`ling_rl/weightsync/methods.py`) uses vLLM's own weight-transfer engine instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported inside vLLM's worker anyway; the driver need not pay for it here
    import torch

EXTENSION_CLS = "ling_rl.weightsync.extension.WeightReloadExtension"
"""Dotted path vLLM imports in each worker (`worker_extension_cls`)."""


def _stream_safetensors(paths: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    # One tensor at a time: the loader copies each into the engine's parameter, so peak memory
    # stays one tensor above the model instead of a second full copy.
    for path in paths:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


class WeightReloadExtension:
    """Mixed into vLLM's worker; `self.model_runner` and `self.vllm_config` come from the worker."""

    model_runner: Any
    vllm_config: Any

    def reload_from_safetensors(self, paths: str | list[str]) -> None:
        """Replace the engine's weights by those in the safetensors file(s) at `paths` (together
        they hold every weight)."""
        from vllm.config import set_current_vllm_config

        from ling_rl.rollout.vllm_engine import on_cpu_platform

        paths = [paths] if isinstance(paths, str) else list(paths)
        # `reload_weights` (not `model.load_weights`) because the CPU backend repacks weights into
        # its own layouts after loading; reload re-runs that post-processing on the new values.
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.reload_weights(weights_iterator=_stream_safetensors(paths))
            if on_cpu_platform():
                from ling_rl.rollout import cpu_platform  # never imported on GPU

                cpu_platform.after_reload(self.model_runner.get_model())
