"""vLLM-CPU workarounds, in one place, imported only when vLLM runs on the CPU platform.

Two defects of the CPU build of vLLM 0.32 need them (the GPU build has neither, and this module
is never imported there): seeded requests crash when a prefill is split over scheduler steps,
and a weight reload skips the CPU MoE kernel's repacking of the routed experts. The second fix
reaches into a vLLM-CPU internal (`CPUUnquantizedExperts`), hence this named adapter. Also here:
the environment that keeps a rollout engine in one process (`engine_env`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def engine_kwargs(max_model_len: int) -> dict[str, Any]:
    """`vllm.LLM` arguments the CPU build needs.

    vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill
    is split over scheduler steps; whole prefills avoid that code path.
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 16384)}


def engine_env() -> dict[str, str]:
    """Environment variables for vLLM-CPU, set before `vllm.LLM` is built (it reads them then).

    With unbound OpenMP threads (`VLLM_CPU_OMP_THREADS_BIND=nobind`, what the rollout actors
    use) the engine core and its worker run in the calling process: by default vLLM-CPU starts
    an engine-core process which starts a worker process, each importing torch and vLLM again
    (~15 s of a ~30 s engine start on 2 cores). Same kernels, same threads, same samples: checked
    token for token and log-prob for log-prob, before and after a weight reload. An explicit
    binding keeps the worker process, which is where vLLM applies it.
    """
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND") != "nobind":
        return {}
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def after_reload(model: torch.nn.Module) -> None:
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
