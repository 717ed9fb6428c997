"""Memory planner: what a recipe needs, per role, before anything starts.

    model = model_config(recipe, recipe_path)              # PlanModel from config.json (no weights)
    plan = plan_memory(recipe, model, gpu_memory_gib=79.2)   # list[RolePlan]
    [role.problem() for role in plan if not role.fits]     # "learner: ... set learner.X"

`ling-rl plan` prints it; `ling-rl train` runs it as a preflight. Arithmetic on the model's
config.json and the recipe: no weights, no GPU (it plans for the cluster the recipe describes, not
for this machine). The model is a `PlanModel` (`ling_rl.commands.plan_models`: one entry per
architecture family, the Ling BailingMoeV2 and the `hf` backend's Qwen3, Llama and Qwen3-MoE); a
recipe setting the model's backend lacks is refused as the recipe check refuses it (which asks the
backend, and so imports torch). Which device a role plans for: the learner is on CUDA when
`learner.device` is `cuda`, or `auto` with `cluster.learner.num_gpus` > 0; the engines are on GPU
when `cluster.rollout.num_gpus` > 0. Roles on CPU count against host memory.

Learner, per rank (FSDP2 over `learner.num_ranks`; fp32 master parameters, as
`ling_rl.learner.loading` keeps them; bf16 compute for `precision: bf16 | fp8`):
  parameters  4 B x params / ranks          (fp32 shards)
  gradients   4 B x trainable / ranks       (fp32 shards; MTP layers are frozen unless model.mtp.enabled)
  optimizer   8 B x trainable / ranks       (AdamW m and v, fp32; one optimizer: the DFT warm
                                            start's own AdamW is dropped at the first RL step)
  unsharded parameters  c x (root + 2 x largest layer): FSDP2 all-gathers a layer in the compute
              dtype (c bytes) and prefetches the next one; the root unit (embeddings, final norm,
              lm_head) stays gathered through the step
  unsharded gradients   c x (root + largest layer): autograd writes a layer's gradient unsharded
              in the compute dtype; the root's (lm_head's from the first backward op on) lives
              until the root's reduce-scatter at the end of backward
  reduce-scatter        4 B x (max(root, largest layer) + largest layer): each unit's gradients are
              copied into an fp32 (`reduce_dtype`) buffer for their reduce-scatter; two are counted,
              as the previous unit's buffer may still be held (its reduce-scatter in flight, on its
              own stream) while the next unit's is filled
  activations tokens x bytes saved for backward per token (see `activation_bytes_per_token`),
              one row with and one without `learner.activation_checkpointing`; for an `hf` model
              also the attention mask of the packed micro-batch (`attention_mask_bytes`)
  logits      chunk x vocab x (3 x 4 B + c) + 4 B x vocab x hidden (+ c x vocab x hidden when
              c < 4): `chunked_token_logprobs` keeps one chunk of `learner.logprob_chunk_tokens`
              positions at a time (compute-dtype logits, their fp32 copy, gradient and softmax
              temporary) and the lm_head weight's gradient in fp32; in bf16 its backward also makes
              a [V, H] temporary in the compute dtype (each chunk's product before it is added to
              the fp32 sum, then the cast of the sum; not both at once). The MTP head runs the same
              chunks after it, not at the same time.
  routes      with `rollout.routing_replay`: int64 expert ids, top_k per token per MoE layer, for
              the whole batch (every rank gets it: prompts_per_step x group_size rows of
              max_prompt_tokens + max_response_tokens); two copies while the old-policy pass
              records routing beside the engine's (r3 with updates_per_batch > 1)
  reference   4 B x params / ranks when the KL term is on (a frozen fp32 sharded copy)
  runtime     CUDA context, NCCL and allocator slack (a constant)
  fragmentation  ALLOCATOR_FRAGMENTATION x the rows above on GPU: the caching allocator's reserved
              but unusable memory (an assumed margin, not measured on a GPU here)
Rollout, per GPU of an engine (vLLM, `tensor_parallel_size` GPUs per engine):
  weights     engine dtype bytes x inference params / tp (no MTP layers)
  KV cache    max_num_seqs x (max_prompt_tokens + max_response_tokens) x KV bytes per token per GPU,
              = 2 (K and V) x layers x max(1, kv_heads / tp) x head_dim x dtype bytes: vLLM
              replicates the KV heads when tp exceeds their count (each GPU holds one)
  runtime     activations, sampler and CUDA graphs (a constant); budget = gpu_memory_utilization x GPU
Host (one node): a runtime per process (driver, learner ranks, engines, reward workers), the
largest checkpoint part rank 0 reads while loading, the memory of the roles that run on CPU, the
routes of the rollout batch in the driver (routing replay), and the larger of two copies of the
model that never exist at once: the final export's fp32 state on learner rank 0
(`checkpoint.export_hf`) and the weight sync's staging files (`shm_file`: the engine-dtype model
under `rollout.weight_sync.dir`, /dev/shm; `object_store`: the object store's copy plus each
engine's files; `nccl` stages nothing).

GPU memory: what the device reports (`torch.cuda.get_device_properties().total_memory`), which is
less than its name: an 80 GB H100 reports about 79.2 GiB (`DEFAULT_GPU_MEMORY_GIB`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ling_rl.commands.plan_models import PlanModel, describe, ling_model
from ling_rl.config import Recipe
from ling_rl.models.ling_config import LingConfig, ModelFolderError

GIB = 2**30

PROCESS_RUNTIME_BYTES = int(0.5 * GIB)
"""Host memory of a process that imported torch and built nothing (measured ~0.4 GiB RSS here;
bench/plan_validate.py measures it again as its baseline)."""

CUDA_RUNTIME_BYTES = 1 * GIB
"""Per GPU: CUDA context, NCCL buffers, caching-allocator slack (a constant, not measured here)."""

VLLM_RUNTIME_BYTES = 2 * GIB
"""Per engine GPU beside weights and KV cache: vLLM's profiled activations, sampler and CUDA graphs
(a rough constant, not measured here)."""

DEFAULT_GPU_MEMORY_GIB = 79.2
"""GPU memory to plan for when nothing better is known: what an 80 GB H100 reports to torch
(`total_memory`, about 79.2 GiB), not its nominal 80."""

ALLOCATOR_FRAGMENTATION = 0.10
"""Learner on GPU: memory the CUDA caching allocator reserves but cannot hand out (blocks split by
tensors of changing sizes), as a fraction of the learner's other rows. An assumed margin, not
measured on a GPU here; `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` in the learner's
environment makes it smaller."""

VLLM_DEFAULT_MAX_NUM_SEQS = 256
"""vLLM's `max_num_seqs` when `rollout.max_num_seqs` is unset."""

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class PlanError(ValueError):
    """The model's config cannot be found or read; the message names the key or flag to set."""


Model = PlanModel | LingConfig
"""What the functions below plan for: a `PlanModel`, or a `LingConfig` built in code (the tiny
presets, bench/plan_validate.py), described by the Ling entry (`plan_models.ling_model`)."""


def as_plan_model(model: Model) -> PlanModel:
    return model if isinstance(model, PlanModel) else ling_model(model)


# --- the model's config ------------------------------------------------------------------------------


def model_config(recipe: Recipe, recipe_path: Path | None = None, override: Path | None = None) -> PlanModel:
    """The architecture of the recipe's model, from a config.json only (never the weights).

    `override` (`--model-config`) wins; then `model.tiny`'s config; a local folder; a hub name in
    the local Hugging Face cache (config.json only, no download); and last a config shipped next
    to the recipe, `configs/<hub name lower-cased>.json` (recipes/configs/ling-mini-2.0.json,
    recipes/configs/qwen3-0.6b.json)."""
    if override is not None:
        return _read_config(override, "--model-config")
    if recipe.model.tiny is not None:
        return _tiny_config(recipe.model.tiny)
    path = str(recipe.model.path)
    if Path(path).is_dir():
        return _read_config(Path(path) / "config.json", "model.path")
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise PlanError(f"model.path: {path} does not exist")
    cached = _cached_hub_config(path)
    if cached is not None:
        return _read_config(cached, "model.path")
    shipped = (recipe_path.parent if recipe_path else Path("recipes")) / "configs" / f"{path.split('/')[1].lower()}.json"
    if shipped.is_file():
        return _read_config(shipped, "model.path")
    raise PlanError(f"model.path: {path} is not in the Hugging Face cache and no config ships for it ({shipped}); "
                    "pass --model-config PATH/config.json")


def _tiny_config(name: str) -> PlanModel:
    """The config of tiny model `name`: a Ling preset or a transformers config (`tiny_hf`), as the
    config.json `init-tiny` writes would read (torch is imported by those modules; tiny recipes are small)."""
    from ling_rl.models.tiny import PRESETS
    from ling_rl.models.tiny_hf import HF_TINY

    data = PRESETS[name].to_hf_dict() if name in PRESETS else HF_TINY[name]().to_dict()
    try:
        return describe(data, source=f"model.tiny={name}")
    except ModelFolderError as e:
        raise PlanError(str(e)) from None


def _cached_hub_config(repo: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return Path(found) if isinstance(found, str) else None


def _read_config(path: Path, key: str) -> PlanModel:
    if not path.is_file():
        raise PlanError(f"{key}: {path} not found")
    try:
        return describe(json.loads(path.read_text()), source=str(path))
    except json.JSONDecodeError as e:
        raise PlanError(f"{key}: {path}: invalid JSON ({e})") from None
    except ModelFolderError as e:
        raise PlanError(f"{key}: {e}") from None


def check_recipe(recipe: Recipe, model: Model) -> None:
    """Refuse what the recipe check refuses for this model's backend (`learner.precision: fp8`,
    `model.mtp.enabled`, ... on `hf`), with the same lines (`RecipeError`): a plan of a run that
    cannot start would mislead."""
    from ling_rl.config import RecipeError
    from ling_rl.models.backend import backend_named, recipe_problems

    m = as_plan_model(model)
    if recipe.model.backend not in ("auto", m.backend):
        raise RecipeError(f"model.backend: {recipe.model.backend} cannot train {m.architecture} ({m.source}); "
                          f"set it to auto or {m.backend}")
    problems = recipe_problems(recipe, backend_named(m.backend), m.model_type)
    if problems:
        raise RecipeError("\n".join(problems))


# --- parameters --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of the model (buffers such as the Ling expert bias excluded)."""

    total: int
    """Every parameter: trunk, MTP layers, embeddings, final norm, lm_head (once when tied)."""
    trainable: int
    """Those with gradients and optimizer state (MTP layers only when trained)."""
    inference: int
    """What the engines load: everything but the MTP layers."""
    largest_layer: int
    """The biggest decoder (or MTP) layer: one FSDP2 unit."""
    root: int
    """Embeddings + final norm + lm_head: the root FSDP2 unit."""
    active: int
    """Per token in the forward pass: `inference` less the routed experts a token does not use
    (num_experts - num_experts_per_tok of them per MoE layer); `inference` for a dense model."""


def _norm(d: int) -> int:
    return d


def _swiglu(m: PlanModel, inner: int, bias: bool) -> int:
    h = m.hidden_size
    return 3 * h * inner + ((2 * inner + h) if bias else 0)


def layer_parameters(model: Model, layer_idx: int) -> int:
    """Parameters of decoder layer `layer_idx` (layers >= num_hidden_layers are MTP layers)."""
    m = as_plan_model(model)
    h, hd = m.hidden_size, m.head_dim
    q, kv = m.num_attention_heads * hd, m.num_key_value_heads * hd
    attn = h * (q + 2 * kv) + ((q + 2 * kv) if m.qkv_bias else 0)
    attn += q * h + (h if m.out_bias else 0)
    attn += 2 * _norm(hd) if m.qk_norm else 0
    if m.is_moe_layer(layer_idx):
        mlp = m.num_experts * h  # router
        mlp += 3 * m.num_experts * m.moe_intermediate_size * h
        mlp += _swiglu(m, m.shared_intermediate_size, m.mlp_bias) if m.shared_intermediate_size else 0
    else:
        mlp = _swiglu(m, m.intermediate_size, m.mlp_bias)
    total = 2 * _norm(h) + attn + mlp
    if layer_idx >= m.num_hidden_layers:  # MTP: enorm, hnorm, eh_proj, final_layernorm
        total += 3 * _norm(h) + 2 * h * h
    return total


def count_parameters(model: Model, train_mtp: bool) -> ParamCounts:
    m = as_plan_model(model)
    trunk = [layer_parameters(m, i) for i in range(m.num_hidden_layers)]
    mtp = [layer_parameters(m, m.num_hidden_layers + d) for d in range(m.num_nextn_predict_layers)]
    head = 0 if m.tie_word_embeddings else m.vocab_size * m.hidden_size
    root = m.vocab_size * m.hidden_size + _norm(m.hidden_size) + head
    total = root + sum(trunk) + sum(mtp)
    unused = moe_layer_count(m) * (m.num_experts - m.num_experts_per_tok) * 3 * m.moe_intermediate_size * m.hidden_size
    return ParamCounts(total=total, trainable=total - (0 if train_mtp else sum(mtp)), inference=root + sum(trunk),
                       largest_layer=max(trunk + mtp), root=root, active=root + sum(trunk) - unused)


# --- activations -------------------------------------------------------------------------------------


def activation_bytes_per_token(model: Model, layer_idx: int, c: int, padded: bool = False) -> int:
    """Bytes autograd keeps per token for the backward of one layer (`ling_rl.models.ling_moe`, or
    transformers' layer for an `hf` model), with compute dtype of `c` bytes (2: bf16, 4: fp32).
    Counted op by op:

    RMSNorm(d): its fp32 input (4d), the normalised input (c d), its output kept by the next linear (c d).
    Attention: input norm; QK-norms on q and k (4 + c per channel); q and k after RoPE and v, kept
      by SDPA (c (q + 2 kv); with `masked_attention` k and v repeated to the query heads, c 3q);
      SDPA's output and its log-sum-exp (c q + 4 heads); the re-laid-out output kept by the dense
      projection (c q).
    Dense SwiGLU(I): gate and up outputs, silu(gate), their product (4 c I).
    MoE: with `fp32_router` the fp32 router input (4 H when c < 4: in fp32 it is the norm output
      itself); the router's scores (4 E: Ling's sigmoid, transformers' fp32 softmax); per routed
      copy (top-k): the expert-sorted input (c H), gate/up/silu/product (4 c I_moe) and the output
      before weighting (c H); with `padded` (Ling's bmm kernel: CPU, or fp32 on CUDA) also the
      padded copy of the input (c H); the shared expert's SwiGLU. Routing imbalance (the padded
      kernel pads every expert to the busiest one) is not counted.
    MTP layer: a MoE layer plus three norms and the concatenated input of eh_proj (2 c H).
    The attention mask of an `hf` model is per micro-batch, not per token: `attention_mask_bytes`.
    """
    m = as_plan_model(model)
    h, hd = m.hidden_size, m.head_dim
    q, kv = m.num_attention_heads * hd, m.num_key_value_heads * hd

    def norm(d: int) -> int:
        return 4 * d + 2 * c * d

    attn = norm(h) + c * (q + 2 * (q if m.masked_attention else kv)) + c * q + 4 * m.num_attention_heads + c * q
    if m.qk_norm:
        attn += (4 + c) * (q + kv)
    if m.is_moe_layer(layer_idx):
        k = m.num_experts_per_tok
        mlp = norm(h) + (4 * h if c < 4 and m.fp32_router else 0) + 4 * m.num_experts
        mlp += k * ((3 if padded and m.expert_padding else 2) * c * h + 4 * c * m.moe_intermediate_size)
        mlp += 4 * c * m.shared_intermediate_size
    else:
        mlp = norm(h) + 4 * c * m.intermediate_size
    total = attn + mlp
    if layer_idx >= m.num_hidden_layers:
        total += 3 * norm(h) + 2 * c * h
    return total


def attention_mask_bytes(model: Model, tokens: int, c: int, layers: int) -> int:
    """With `masked_attention` (transformers' SDPA path): a packed micro-batch of `tokens` attends
    through one boolean [T, T] block-causal mask (1 B per entry, held through the step), which SDPA
    converts to a compute-dtype copy that each layer keeps for its backward (c B per entry, for
    `layers` layers). 0 for a model that attends per sequence (Ling)."""
    return tokens * tokens * (1 + c * layers) if as_plan_model(model).masked_attention else 0


def activation_bytes(model: Model, tokens: int, c: int, checkpointing: bool, train_mtp: bool,
                     padded: bool = False) -> int:
    """Activations of one micro-batch of `tokens` at the start of backward (logits excluded).

    Without checkpointing: every layer's saved tensors, the final norm, and one layer's worth of
    gradient buffers in backward. With per-layer checkpointing: each layer's input (c H), plus one
    layer recomputed in backward and its gradients (2 x the largest layer). An `hf` model's
    attention mask: kept by every layer without checkpointing, by the recomputed one with it."""
    m = as_plan_model(model)
    layers = list(range(m.num_hidden_layers)) + (
        [m.num_hidden_layers + d for d in range(m.num_nextn_predict_layers)] if train_mtp else [])
    per_layer = [activation_bytes_per_token(m, i, c, padded) for i in layers]
    final_norm = 4 * m.hidden_size + 2 * c * m.hidden_size
    if checkpointing:
        return tokens * (len(layers) * c * m.hidden_size + 2 * max(per_layer) + final_norm) \
            + attention_mask_bytes(m, tokens, c, 1)
    return tokens * (sum(per_layer) + max(per_layer) + final_norm) + attention_mask_bytes(m, tokens, c, len(layers))


def logits_bytes(model: Model, chunk_tokens: int, c: int) -> int:
    """One log-prob chunk's [chunk, vocab] tensors at their peak and the fp32 lm_head weight gradient
    (see the module docstring)."""
    m = as_plan_model(model)
    return chunk_tokens * m.vocab_size * (3 * 4 + c) + 4 * m.vocab_size * m.hidden_size


def head_temporary_bytes(model: Model, c: int) -> int:
    """The [V, H] compute-dtype temporary of `chunked_token_logprobs`'s backward: with c < 4 each
    chunk's `grad_logits.T @ h` before it is added to the fp32 sum, then the sum's cast back to the
    weight's dtype (one at a time); in fp32 the product is accumulated in place (`addmm_`)."""
    m = as_plan_model(model)
    return c * m.vocab_size * m.hidden_size if c < 4 else 0


def moe_layer_count(model: Model) -> int:
    return as_plan_model(model).moe_layer_count


def batch_route_bytes(recipe: Recipe, model: Model) -> int:
    """One copy of a whole batch's routes (`TrainBatch.routed_experts`): int64 expert ids, top_k per
    token per MoE layer, prompts_per_step x group_size rows of max_prompt + max_response tokens."""
    m = as_plan_model(model)
    rc = recipe.rollout
    tokens = rc.prompts_per_step * rc.group_size * (rc.max_prompt_tokens + rc.max_response_tokens)
    return tokens * m.moe_layer_count * m.num_experts_per_tok * 8


def route_bytes(recipe: Recipe, model: Model) -> int:
    """Routing replay's routes on each learner rank (every rank receives the whole batch): once for
    the engine's routes (r3) and once for the routing the old-policy pass records (r2 or r3 with
    `learner.updates_per_batch` > 1: `LearnerWorker.old_logprobs`); 0 without routing replay."""
    mode = recipe.rollout.routing_replay
    copies = (mode == "r3") + (mode != "none" and recipe.learner.updates_per_batch > 1)
    return copies * batch_route_bytes(recipe, model)


def kv_bytes_per_token(model: Model, dtype_bytes: int, tp: int) -> int:
    """KV cache bytes per token on one GPU of a tensor-parallel engine: vLLM gives each GPU
    kv_heads / tp heads, and one (replicated) head when tp exceeds the KV head count."""
    m = as_plan_model(model)
    heads = max(1, m.num_key_value_heads // tp)
    return 2 * m.num_hidden_layers * heads * m.head_dim * dtype_bytes


# --- the plan ----------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    bytes: int
    key: str | None = None
    """The recipe key that makes this row smaller (named when the role does not fit)."""
    counted: bool = True
    """False: shown for comparison only (e.g. activations with the other checkpointing setting)."""
    note: str | None = None
    """Why a row is not counted, when not "not used" (shown in the table)."""


@dataclass
class RolePlan:
    role: str
    where: str
    """What `budget` is: e.g. "per GPU (80 GiB x 0.85)" or "host"."""
    budget: int
    rows: list[Row] = field(default_factory=list)
    scale: int = 1
    """How many copies of the rows share the budget (learner ranks on one CPU host)."""

    @property
    def total(self) -> int:
        return self.scale * sum(r.bytes for r in self.rows if r.counted)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def problem(self) -> str:
        """One line: what does not fit, and the key to change."""
        keyed = [r for r in self.rows if r.counted and r.key]
        fixed = self.scale * sum(r.bytes for r in self.rows if r.counted and not r.key)
        # A part that alone (with the fixed ones) exceeds the budget must shrink whatever else does.
        alone = [r for r in keyed if fixed + self.scale * r.bytes > self.budget]
        biggest = max(alone or keyed, key=lambda r: r.bytes) if keyed else None
        fix = f"; largest part: {biggest.name} ({gib(biggest.bytes * self.scale)}), change {biggest.key}" if biggest else ""
        return f"{self.role}: needs {gib(self.total)} {self.where}, {gib(self.budget)} available{fix}"


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def compute_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def learner_on_gpu(recipe: Recipe) -> bool:
    device = recipe.learner.device
    return device == "cuda" or (device == "auto" and recipe.cluster.learner.num_gpus > 0)


def rollout_on_gpu(recipe: Recipe) -> bool:
    return recipe.cluster.rollout.num_gpus > 0


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def plan_memory(recipe: Recipe, model: Model, gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
                host_memory_gib: float | None = None) -> list[RolePlan]:
    """Per role, the estimated memory of `recipe` with `model` (see the module docstring). A
    setting the model's backend lacks raises `RecipeError` (`check_recipe`)."""
    cfg = as_plan_model(model)
    check_recipe(recipe, cfg)
    gpu = int(gpu_memory_gib * GIB)
    host = int(host_memory_gib * GIB) if host_memory_gib is not None else host_memory_bytes()
    learner = _learner(recipe, cfg, gpu, host)
    rollout = _rollout(recipe, cfg, gpu, host)
    roles = [learner, rollout]
    roles.append(_host(recipe, cfg, host, [r for r in roles if r.where == "host"]))
    return roles


def _learner(recipe: Recipe, cfg: PlanModel, gpu: int, host: int) -> RolePlan:
    lc = recipe.learner
    ranks, c = lc.num_ranks, compute_bytes(lc.precision)
    train_mtp = recipe.model.mtp.enabled and cfg.num_nextn_predict_layers > 0
    p = count_parameters(cfg, train_mtp)
    tokens = lc.micro_batch_tokens
    checkpointing = lc.activation_checkpointing
    chunk = min(lc.logprob_chunk_tokens, tokens)
    on_gpu = learner_on_gpu(recipe)
    rows = [
        Row("parameters (fp32 shards)", 4 * p.total // ranks, "learner.num_ranks"),
        Row("gradients (fp32 shards)", 4 * p.trainable // ranks, "learner.num_ranks"),
        Row("optimizer (AdamW m, v fp32)", 8 * p.trainable // ranks, "learner.num_ranks"),
        Row("unsharded parameters (FSDP2: root, layer, prefetched layer)", c * (p.root + 2 * p.largest_layer)),
        Row("unsharded gradients (FSDP2: root, one layer)", c * (p.root + p.largest_layer)),
        Row("reduce-scatter buffers (fp32, two in flight)", 4 * (max(p.root, p.largest_layer) + p.largest_layer)),
    ]
    for on in (False, True):
        rows.append(Row(f"activations, checkpointing {'on' if on else 'off'} ({tokens} tokens)",
                        activation_bytes(cfg, tokens, c, on, train_mtp, padded=not (on_gpu and c == 2)),
                        "learner.micro_batch_tokens" if on else "learner.activation_checkpointing",
                        counted=on == checkpointing))
    rows.append(Row(f"logits chunk ({chunk} x {cfg.vocab_size}), lm_head grad",
                    logits_bytes(cfg, chunk, c), "learner.logprob_chunk_tokens"))
    if head_temporary_bytes(cfg, c):
        rows.append(Row(f"lm_head grad temporary ({cfg.vocab_size} x {cfg.hidden_size})", head_temporary_bytes(cfg, c)))
    if route_bytes(recipe, cfg):
        rows.append(Row(f"routes ({recipe.rollout.routing_replay}, int64, whole batch)", route_bytes(recipe, cfg),
                        "rollout.prompts_per_step"))
    if recipe.algorithm.kl.needs_reference:
        rows.append(Row("reference model (fp32 shards)", 4 * p.total // ranks, "algorithm.kl.coef"))
    if on_gpu:
        rows.append(Row("CUDA context, NCCL, allocator", CUDA_RUNTIME_BYTES))
        counted = sum(r.bytes for r in rows if r.counted)
        rows.append(Row(f"allocator fragmentation ({ALLOCATOR_FRAGMENTATION:.0%} of the above)",
                        int(ALLOCATOR_FRAGMENTATION * counted)))
        return RolePlan("learner", f"per GPU ({ranks} ranks)", gpu, rows)
    rows.append(Row("process runtime", PROCESS_RUNTIME_BYTES))
    return RolePlan("learner", "host", host, rows, scale=ranks)


def _rollout(recipe: Recipe, cfg: PlanModel, gpu: int, host: int) -> RolePlan:
    rc = recipe.rollout
    dtype = rc.engine_dtype(recipe.model.dtype)
    b = _DTYPE_BYTES[dtype]
    tp = rc.tensor_parallel_size
    p = count_parameters(cfg, train_mtp=False)
    rows = [Row(f"weights ({dtype}, / tp {tp})", b * p.inference // tp, "rollout.tensor_parallel_size")]
    if rollout_on_gpu(recipe):
        seqs = rc.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS
        length = rc.max_prompt_tokens + rc.max_response_tokens
        rows.append(Row(f"KV cache ({seqs} seqs x {length} tokens)", seqs * length * kv_bytes_per_token(cfg, b, tp),
                        "rollout.max_num_seqs"))
        rows.append(Row("activations, sampler, CUDA graphs", VLLM_RUNTIME_BYTES))
        budget = int(rc.gpu_memory_utilization * gpu)
        return RolePlan("rollout", f"per GPU ({rc.gpu_memory_utilization:g} x {gib(gpu)})", budget, rows,
                        )
    rows.append(Row(f"KV cache (rollout.kv_cache_gib)", rc.kv_cache_gib * GIB, "rollout.kv_cache_gib"))
    rows.append(Row("process runtime", PROCESS_RUNTIME_BYTES))
    return RolePlan("rollout", "host", host, rows, scale=rc.num_engines)


def _host(recipe: Recipe, cfg: PlanModel, host: int, on_host: list[RolePlan]) -> RolePlan:
    """Everything on one node's host memory: the CPU roles whole, and for GPU roles their processes
    and what rank 0 reads while loading (one checkpoint part, fp32)."""
    rows = [Row(f"{r.role} on CPU (x {r.scale})", r.total, _host_key(r)) for r in on_host]
    rows.append(Row("driver process", PROCESS_RUNTIME_BYTES))
    if route_bytes(recipe, cfg):  # the driver builds the TrainBatch the ranks receive
        rows.append(Row("routes of the rollout batch in the driver (int64)", batch_route_bytes(recipe, cfg),
                        "rollout.prompts_per_step"))
    if learner_on_gpu(recipe):
        ranks = recipe.learner.num_ranks
        p = count_parameters(cfg, train_mtp=False)
        rows.append(Row(f"learner processes (x {ranks})", ranks * PROCESS_RUNTIME_BYTES, "learner.num_ranks"))
        rows.append(Row("checkpoint part read by rank 0 (fp32)", 4 * max(p.largest_layer, p.root)))
    if rollout_on_gpu(recipe):
        rows.append(Row(f"engine processes (x {recipe.rollout.num_engines})",
                        recipe.rollout.num_engines * PROCESS_RUNTIME_BYTES, "rollout.num_engines"))
    workers = recipe.cluster.reward_workers
    rows.append(Row(f"reward workers (x {workers})", workers * PROCESS_RUNTIME_BYTES, "cluster.reward_workers"))
    rows += _model_copies(recipe, cfg)
    return RolePlan("host", "host", host, rows)


def _model_copies(recipe: Recipe, cfg: PlanModel) -> list[Row]:
    """The final export's fp32 state on learner rank 0 and the weight sync's staging files: whole
    copies of the model in host memory that never exist at once (the sync's files are deleted once
    the engines loaded them; the export runs after the last step), so only the larger is counted."""
    from ling_rl.weightsync.methods import choose_method

    rc = recipe.rollout
    method = choose_method(rc.weight_sync.method, rollout_on_gpu(recipe))
    weights = _DTYPE_BYTES[rc.engine_dtype(recipe.model.dtype)] * count_parameters(cfg, train_mtp=False).inference
    copies = {"shm_file": 1, "object_store": 1 + rc.num_engines}.get(method, 0)  # nccl: nothing staged
    rows = []
    if recipe.checkpoint.export_hf:
        rows.append(Row("final export: fp32 state on learner rank 0", 4 * count_parameters(cfg, True).total,
                        "checkpoint.export_hf"))
    if copies:
        where = "object store + each engine's files" if method == "object_store" else rc.weight_sync.dir
        rows.append(Row(f"weight sync staging ({method}: {where})", copies * weights, "rollout.weight_sync.method"))
    if len(rows) == 2:
        smaller = min(rows, key=lambda r: r.bytes)
        smaller.counted, smaller.note = False, "not at the same time as the other copy"
    return rows


def _host_key(role: RolePlan) -> str | None:
    keyed = [r for r in role.rows if r.counted and r.key]
    return max(keyed, key=lambda r: r.bytes).key if keyed else None


def count_text(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def model_summary(model: Model) -> str:
    """One line above the table: the architecture, its backend, where its config came from, and its
    parameters (total, in MTP layers, active per token)."""
    m = as_plan_model(model)
    p = count_parameters(m, train_mtp=True)
    mtp = f" ({count_text(p.total - p.inference)} in MTP layers)" if p.total > p.inference else ""
    tied = ", tied embeddings" if m.tie_word_embeddings else ""
    moe = (f", {m.moe_layer_count} MoE layers of {m.num_experts} experts, top-{m.num_experts_per_tok}"
           if m.moe_layer_count else "")
    return (f"model: {m.architecture} ({m.backend} backend; {m.source}): {count_text(p.total)} parameters{mtp}, "
            f"{count_text(p.active)} active per token; {m.num_hidden_layers} layers{moe}{tied}")


def plan_table(roles: list[RolePlan]):
    """A rich table of `roles`: one line per row, a total line per role."""
    from rich.table import Table

    table = Table(title="Estimated memory (GiB)", show_lines=False)
    table.add_column("role")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    table.add_column("shrink with")
    for role in roles:
        for i, row in enumerate(role.rows):
            size = f"{row.bytes / GIB:.2f}" if row.counted else f"({row.bytes / GIB:.2f})"
            note = row.key or ""
            if not row.counted:
                note = row.note or "not used" + (f": {row.key}" if row.key else "")
            table.add_row(role.role if i == 0 else "", row.name, size, note)
        times = f" x {role.scale}" if role.scale > 1 else ""
        verdict = "[green]fits[/]" if role.fits else "[bold red]does not fit[/]"
        table.add_row("", f"[bold]total{times}[/], {role.where}", f"[bold]{role.total / GIB:.2f}[/]",
                      f"{verdict} in {role.budget / GIB:.1f}", end_section=True)
    return table
