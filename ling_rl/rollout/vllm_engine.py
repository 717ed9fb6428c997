"""Building a vLLM engine on a project model folder, and plain sampling with it.

The Ray rollout actor builds on `build_llm`; `sample_texts` serves `ling-rl sample`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def build_llm(model_dir: str | Path, dtype: str = "float32", seed: int = 0, max_model_len: int = 2048,
              kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.6, **engine_kwargs: Any) -> Any:
    """A `vllm.LLM` on `model_dir` (trust_remote_code: the folder carries its configuration class)."""
    # vLLM reads these at import time; setdefault keeps a user's explicit choice.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import torch
    from vllm import LLM

    kwargs: dict[str, Any] = dict(model=str(model_dir), trust_remote_code=True, dtype=dtype, seed=seed,
                                  max_model_len=max_model_len, enforce_eager=True)
    if torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
        # prefill is split over scheduler steps; whole prefills avoid that code path.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(max_model_len, 16384)
    kwargs.update(engine_kwargs)
    return LLM(**kwargs)


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
