"""The `learner:` and `checkpoint:` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ling_rl.schema import Section


class FP8Config(Section):
    """FP8 training of the large linears through torchao (used when `learner.precision: fp8`)."""

    scaling: Literal["tensorwise", "rowwise"] = "tensorwise"
    """Scale granularity of the float8 casts: one scale per tensor, or per row (more accurate, slower)."""

    fsdp_float8_all_gather: bool = True
    """All-gather FSDP2 weight shards already cast to float8 (half the bytes of bf16); tensorwise only."""

    min_dim: int = Field(default=64, ge=16)
    """Linears with an input or output size below this stay high precision (casts cost more than they save)."""

    emulate: Literal["auto"] | bool = "auto"
    """Emulate the float8 GEMMs in high precision (`auto`: when no CUDA device is present, e.g. CPU CI)."""

    routed_experts: Literal["auto"] | bool = "auto"
    """Routed experts through torchao's float8 grouped GEMM (CUDA sm90+, a torchao with MoE float8
    training; never emulated). `auto`: where supported (the learner logs which), `true`: required
    (an error where unsupported), `false`: the experts stay bf16."""


class LearnerConfig(Section):
    """Optimisation on the FSDP2 learner ranks."""

    num_ranks: int = Field(default=1, ge=1)
    """Data-parallel FSDP2 ranks."""

    lr: float = Field(default=1e-6, gt=0)
    """Peak learning rate of AdamW."""

    weight_decay: float = Field(default=0.0, ge=0)
    """Decoupled weight decay."""

    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""

    warmup_steps: int = Field(default=0, ge=0)
    """Linear warm-up length in RL steps (rollout batches, like `run.steps`), not optimizer updates:
    the `updates_per_batch` updates of one batch share its LR."""

    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warm-up; cosine reaches its floor at `run.steps`."""

    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Cosine floor as a fraction of `lr`."""

    grad_clip: float = Field(default=1.0, gt=0)
    """Global gradient-norm clip."""

    call_timeout_s: float = Field(default=1800.0, gt=0)
    """The deadline of one call to the learner ranks (start, setup, a train step, a weight sync, a
    checkpoint), counted once from when the call is sent: a rank not done by then fails the call,
    naming the rank. A learner step has no progress signal to judge by, so raise this for steps
    that are long by design (big batches, many `updates_per_batch`)."""

    micro_batch_tokens: int = Field(default=8192, ge=1)
    """Token budget of one forward/backward micro-batch: rows x longest row when padded, the sum of
    the rows' lengths when `packing`."""

    packing: bool = True
    """Lay a micro-batch's rows end to end in one sequence (positions restarting per row, attention
    within each row) instead of right-padding them to the longest: no compute on padding. The
    losses, metrics and gradients are those of the padded path (tests/learner/test_packing.py).
    On by default: with `balance_ranks` it trained 1.82x the padded layout's tokens/s on the 2-core
    CPU box (bench/RESULTS.md, "Learner packing"). `false`: right-padded rows (needed for `compile`)."""

    compile: bool = False
    """`torch.compile` each trunk decoder layer (inductor, dynamic shapes; per layer, as torchtitan
    compiles per block). Not with `packing`: the per-row attention takes the row lengths as a Python
    list, and every new set of lengths recompiles (set `packing: false` with it). Off by default, not
    measured faster anywhere yet: on this CPU box a MoE layer took ~90 s to compile and recompiled
    for new shapes (the per-expert loop reads the expert counts on the host: graph breaks); a dense
    layer ~5 s."""

    balance_ranks: bool = True
    """Plan micro-batches by token count: rows longest first, each to the least-loaded of
    num_ranks x M micro-batches (M as small as the budget allows), so every rank runs M
    micro-batches of nearly equal tokens. Off: each rank takes a strided share of the rows, in
    order. The update is the same either way (losses are normalised by the whole batch). On by
    default: it pays with `packing` (1.82x vs 1.62x packed alone, bench/RESULTS.md); with padded
    rows alone it measured 0.94x."""

    logprob_chunk_tokens: int = Field(default=1024, ge=1)
    """Log-probs (and entropy) are computed from the final hidden states this many tokens at a time,
    in forward and (recomputed) in backward, so a micro-batch's [tokens, vocab] logits never exist
    at once: one 1024-token chunk of a 157k vocabulary is 0.64 GB in fp32, 8192 tokens would be 5 GB
    (and top-p's sort and masks several times that). Larger chunks: fewer, bigger lm_head GEMMs."""

    activation_checkpointing: bool = False
    """Keep only each trunk decoder layer's input during the forward and recompute the layer in
    backward (the routing of the first pass is replayed): activation memory of one layer instead
    of all, for about one more forward of compute. Off by default: it only pays for long
    sequences on a memory-bound GPU (see `ling-rl plan`); turn it on there."""

    updates_per_batch: int = Field(default=1, ge=1)
    """Optimizer steps per rollout batch (> 1 needs an old-policy forward)."""

    precision: Literal["fp32", "bf16", "fp8"] = "bf16"
    """Compute precision: fp32 weights, with bf16 compute through FSDP2 mixed precision for `bf16`;
    `fp8` adds float8 GEMMs for the attention and dense/shared-expert linears (see `learner.fp8`)."""

    fp8: FP8Config = Field(default_factory=FP8Config)
    """FP8 settings, read when `precision: fp8`."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where each rank computes: `cuda` (one GPU per rank, NCCL collectives; needs
    `cluster.learner.num_gpus` >= 1), `cpu` (gloo), or `auto` (CUDA when the rank sees a GPU)."""

    freeze_expert_bias: bool = True
    """Keep the router expert bias fixed during RL (Ring-1T 2.3.4). `false`: after each optimizer
    update, the aux-loss-free balancing update of DeepSeek-V3, bias_e += expert_bias_update_rate *
    sign(mean load - load_e), from the tokens (prompt and response, no padding) routed to each expert
    of each trunk MoE layer in that update, summed over ranks."""

    expert_bias_update_rate: float = Field(default=1e-3, ge=0)
    """Step of the expert-bias update when `freeze_expert_bias: false` (DeepSeek-V3 used 1e-3)."""


    @model_validator(mode="after")
    def _compile_without_packing(self) -> LearnerConfig:
        if self.compile and self.packing:
            raise ValueError("learner.compile: true needs learner.packing: false (packing is on by default): packed "
                             "attention takes the row lengths as a Python list and every new set of lengths recompiles")
        return self


class CheckpointConfig(Section):
    """Checkpoints (torch.distributed.checkpoint) and the final Hugging Face export."""

    every: int = Field(default=50, ge=0)
    """Save every N steps; 0 saves only at the end."""

    keep_last: int = Field(default=2, ge=1)
    """Older checkpoints are deleted once a newer one is complete."""

    resume: Literal["auto", "never"] | str = "auto"
    """`auto`: continue from the latest complete checkpoint of the run folder; `never`; or a path."""

    export_hf: bool = True
    """Write a Hugging Face folder of the final policy."""
