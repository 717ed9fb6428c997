"""The `rollout:` section: generation by the inference engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ling_rl.schema import Section


class WeightSyncConfig(Section):
    """Learner -> rollout engines after each update (`ling_rl/rollout/sync.py`)."""

    method: Literal["auto", "shm_file", "object_store", "nccl"] = "auto"
    """`shm_file`: safetensors files under `dir` on learner rank 0's node (every engine on that
    node); `object_store`: buckets through Ray's object store, written to each engine's own node
    (engines on other nodes); `nccl`: an NCCL broadcast from learner rank 0 to every engine
    through vLLM's weight-transfer engine (CUDA only; written for CUDA, not run on a GPU yet).
    `auto`: nccl when the engines run on CUDA, shm_file when every engine shares learner rank
    0's Ray node, object_store otherwise."""

    bucket_mib: int = Field(default=512, ge=1)
    """Size of one transfer bucket (MiB): the learner gathers weights layer by layer and ships
    them in buckets of about this size, so it never holds the whole model at once (a tensor
    larger than a bucket travels alone)."""

    dir: str = "/dev/shm"
    """Where the bucket files go (`shm_file` on learner rank 0's node; `object_store` on each
    engine's node): a RAM file system keeps the file a memory copy."""


class RolloutConfig(Section):
    """Sampling of groups of responses by the rollout engines (vLLM)."""

    engine: Literal["vllm"] = "vllm"
    """Inference engine."""

    num_engines: int = Field(default=1, ge=1)
    """Data-parallel engine replicas."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs per engine (vLLM tensor parallelism)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vLLM's weight and activation dtype; `auto`: `model.dtype` (the learner's parameter dtype)."""

    enforce_eager: bool | None = None
    """Run the engine without CUDA graphs; unset: false on GPU (CUDA graphs on), true on CPU."""

    max_num_seqs: int | None = Field(default=None, ge=1)
    """Most sequences an engine runs at once (vLLM's `max_num_seqs`); unset: vLLM's default."""

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

    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig)
    """How the learner's weights reach the engines after each step."""

    def engine_dtype(self, model_dtype: str) -> str:
        """The dtype the engines run in: `dtype`, or the model's when `auto`."""
        return model_dtype if self.dtype == "auto" else self.dtype
