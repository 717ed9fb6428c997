"""Weight sync into a running vLLM engine: a worker extension that reloads from a safetensors file.

vLLM mixes `WeightReloadExtension` into its worker class (`worker_extension_cls`), and
`LLM.collective_rpc("reload_from_safetensors", args=(path,))` runs the method in every worker.
A path crosses the rpc, not tensors: tensors fail to pickle through vLLM's rpc on CPU, and a file
under /dev/shm keeps the transfer a memory copy. The file holds Hugging Face BailingMoeV2 names
(`ling_rl.models.hf_io.inference_weights`), the same names vLLM's loader reads from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported inside vLLM's worker anyway; the driver need not pay for it here
    import torch

EXTENSION_CLS = "ling_rl.rollout.weight_sync.WeightReloadExtension"
"""Dotted path vLLM imports in each worker (`worker_extension_cls`)."""


def _stream_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    # One tensor at a time: the loader copies each into the engine's parameter, so peak memory
    # stays one tensor above the model instead of a second full copy.
    with safe_open(path, framework="pt") as f:
        for name in f.keys():
            yield name, f.get_tensor(name)


class WeightReloadExtension:
    """Mixed into vLLM's worker; `self.model_runner` and `self.vllm_config` come from the worker."""

    model_runner: Any
    vllm_config: Any

    def reload_from_safetensors(self, path: str) -> None:
        """Replace the engine's weights by those in the safetensors file at `path`."""
        from vllm.config import set_current_vllm_config

        # `reload_weights` (not `model.load_weights`) because the CPU backend repacks weights into
        # its own layouts after loading; reload re-runs that post-processing on the new values.
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.reload_weights(weights_iterator=_stream_safetensors(path))
            _repack_cpu_moe_experts(self.model_runner.get_model())


def _repack_cpu_moe_experts(model: torch.nn.Module) -> None:
    """Re-run the CPU MoE kernel's prepacking of the routed-expert weights after a reload.

    vLLM (0.32, unquantized MoE) calls the experts kernel's `process_weights_after_loading` only
    on the first load: on a weight update it copies the reloaded weights into the layer in
    checkpoint layout and skips the CPU kernel's prepack, so the kernel reads unpacked weights
    as packed ones (log-probs off by ~0.1 even when reloading identical weights). Checked by
    tests/rollout/test_weight_sync.py against the project's model.
    """
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    for module in model.modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if isinstance(experts, CPUUnquantizedExperts):
            experts.process_weights_after_loading(module)
