"""The `rollout:` section: generation by the inference engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ling_rl.schema import Section


class WeightSyncConfig(Section):
    """Learner -> rollout engines after each update (`ling_rl/weightsync/methods.py`)."""

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

    max_staleness: int = Field(default=0, ge=0)
    """Asynchronous RL (docs/async.md): the most policy versions a trained token may lag behind
    the learner (version = RL steps the learner has taken). 0: the synchronous loop, generation
    of step n+1 after the weights of step n are synced. k >= 1: the engines generate the next
    batch while the learner trains on the current one (`ling_rl/driver/kstale.py`)."""

    token_budget: int | None = Field(default=None, ge=1)
    """Partial rollouts (C3PO++; needs max_staleness >= 1): the most new tokens one response gets
    per generation call (one call per policy version in steady state). A response still running
    then is continued in the next call under the newer weights (its tokens kept), not restarted.
    Unset: whole responses in one call. A response of max_response_tokens needs
    ceil(max_response_tokens / token_budget) calls, which must not exceed max_staleness."""

    max_interruptions: int | None = Field(default=None, ge=0)
    """Partial rollouts: a response cut by the token budget more than this many times is dropped,
    with its group, and counted (`async/dropped_responses`). Unset: no limit beyond the
    staleness bound (a response then needs at most ceil(max_response_tokens / token_budget) - 1)."""

    gpu_memory_utilization: float = Field(default=0.6, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (GPU only)."""

    kv_cache_gib: int = Field(default=1, ge=1)
    """KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)."""

    routing_replay: Literal["none", "r2", "r3"] = "none"
    """MoE routing replay: `r2` records the experts chosen in the learner's old-policy pass and
    reuses them in every update of the batch (matters when learner.updates_per_batch > 1). `r3`
    (rollout routing replay) has the engines return the experts every token went to and every
    learner forward of the batch use them (gate weights still from the router, so it trains);
    where the engine gave none (a row's last token), the old-policy pass's choice is kept for the
    updates, as in r2. On GPU vLLM returns the routes; its CPU build cannot, so there they are
    captured from the engine's forward (ling_rl/rollout/cpu_routes.py; prefix caching off)."""

    start_timeout_s: float = Field(default=1200, gt=0)
    """Seconds from starting the engines until each has loaded the model and answers; a later
    or failed engine fails the run, named (model download and CUDA graph capture included)."""

    stall_timeout_s: float = Field(default=300, gt=0)
    """A generation call (training or evaluation) fails, naming the engine, when an engine
    finishes no vLLM engine step for this many seconds. There is no wall-clock limit on the
    call: one that keeps stepping (each step a new token for every running sequence, or a
    prefill) runs as long as its batch needs."""

    call_timeout_s: float = Field(default=600, gt=0)
    """Every other engine call (weight reload and sync steps, node ids): one deadline per call,
    from when it is sent."""

    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig)
    """How the learner's weights reach the engines after each step."""

    @model_validator(mode="after")
    def _async_keys(self) -> RolloutConfig:
        if self.max_staleness == 0:
            for key in ("token_budget", "max_interruptions"):
                if getattr(self, key) is not None:
                    raise ValueError(f"rollout.{key} is set, but rollout.max_staleness is 0 (synchronous: whole "
                                     f"responses in one call); set max_staleness >= 1 or remove {key}")
            return self
        if self.routing_replay == "r3":
            raise ValueError("rollout.routing_replay r3 with rollout.max_staleness >= 1: the asynchronous driver does "
                             "not carry the engines' routes yet; use max_staleness 0, or r2")
        calls = -(-self.max_response_tokens // (self.token_budget or self.max_response_tokens))
        if calls > self.max_staleness:
            raise ValueError(f"rollout.token_budget {self.token_budget}: a response of rollout.max_response_tokens "
                             f"{self.max_response_tokens} needs {calls} generation calls, which can span {calls} policy "
                             f"versions, more than rollout.max_staleness {self.max_staleness}; set token_budget >= "
                             f"{-(-self.max_response_tokens // self.max_staleness)} or max_staleness >= {calls}")
        return self

    def engine_dtype(self, model_dtype: str) -> str:
        """The dtype the engines run in: `dtype`, or the model's when `auto`."""
        return model_dtype if self.dtype == "auto" else self.dtype
