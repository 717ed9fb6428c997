"""The `rollout:` section: generation by the inference engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ling_rl.schema import Section


class RolloutConfig(Section):
    """Sampling of groups of responses by the rollout engines (vLLM)."""

    engine: Literal["vllm"] = "vllm"
    """Inference engine."""

    num_engines: int = Field(default=1, ge=1)
    """Data-parallel engine replicas."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs per engine."""

    prompts_per_step: int = Field(default=8, ge=1)
    """Prompts sampled per RL step."""

    group_size: int = Field(default=8, ge=1)
    """Responses per prompt (G); group-relative advantages need G >= 2."""

    max_response_tokens: int = Field(default=512, ge=1)
    """Generation budget per response (a curriculum stage may lower it)."""

    max_prompt_tokens: int = Field(default=512, ge=1)
    """Prompts longer than this are an error naming the dataset row."""

    temperature: float = Field(default=1.0, ge=0)
    """Sampling temperature (1.0: the model's own distribution). The engines report, and the
    learner's ratios use, log-probs of the tempered (and top-k / top-p truncated) distribution,
    i.e. of the policy that sampled; below 1e-5 decoding is greedy."""

    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling (applied after top-k); the learner applies the same truncation."""

    top_k: int = Field(default=-1, ge=-1)
    """Top-k sampling; -1 (or 0) disables it; the learner applies the same truncation."""

    seed: int = 0
    """Base seed; each request gets a seed derived from it, the step and its index."""

    gpu_memory_utilization: float = Field(default=0.6, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (GPU only)."""

    kv_cache_gib: int = Field(default=1, ge=1)
    """KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)."""

    routing_replay: Literal["none", "r2"] = "none"
    """MoE routing replay: `r2` records the experts chosen in the learner's old-policy pass and
    reuses them in every update of the batch (matters when learner.updates_per_batch > 1)."""

    weight_sync_dir: str = "/dev/shm"
    """Where the learner writes the safetensors file the engines reload after each step (a RAM
    file system on the engines' host keeps the sync a memory copy)."""
