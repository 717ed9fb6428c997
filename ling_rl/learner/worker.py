"""One FSDP2 learner rank (a Ray actor in production, a plain object in single-process tests).

The learner is algorithm-agnostic: it gets a `TrainBatch` (per-token advantages, unit ids,
inference log-probs) and the algorithm config, and calls `ling_rl.algorithms.policy_loss`.
Every rank receives the whole batch and trains on its share of the rows (strided, or balanced by
tokens: `ling_rl.learner.microbatch`), in micro-batches that are right-padded or packed
(`ling_rl.learner.packing`); losses are normalised by the whole batch's token (or response) count,
so N ranks compute the same update as one rank, whatever the plan.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy

from ling_rl import run_logs
from ling_rl.algorithms import policy_loss
from ling_rl.algorithms.config import AlgorithmConfig
from ling_rl.algorithms.losses import aggregation_count
from ling_rl.learner.device import BACKENDS, batch_to, resolve_device, rng_state, set_rng_state
from ling_rl.learner.export import LEARNER_DIR
from ling_rl.learner.fp8 import apply_fp8
from ling_rl.learner.loading import build_sharded
from ling_rl.learner.logprobs import TokenLogprobs, chunked_token_logprobs
from ling_rl.learner.microbatch import plan_micro_batches
from ling_rl.learner.packing import Pack
from ling_rl.learner.schedule import build_optimizer
from ling_rl.learner.sections import LearnerSections
from ling_rl.models.backend import resolve_backend
from ling_rl.routing import check_routes, mismatch_counts, mismatch_metrics
from ling_rl.types import TrainBatch

# Metrics reduced across micro-batches and ranks by sum (already normalised by the whole batch),
# by max / min, or otherwise as a token-weighted mean.
_SUMMED = {"loss", "pg_loss", "kl", "mtp_loss"}


@dataclass
class TokenOutputs:
    """A micro-batch's forward, per token in its padded [B, T] layout (packed or not)."""

    logprobs: torch.Tensor
    """[B, T] log-prob of each token given the ones before in its row (0 at position 0)."""
    entropy: torch.Tensor | None
    """[B, T-1] behaviour entropy at positions 1.. (when asked)."""
    mtp_logprobs: list[torch.Tensor]
    """Per MTP depth d, [B, T-1-d]: position t's log-prob of token t+1+d (when asked)."""
    routed_experts: list[torch.Tensor] | None
    """Per MoE layer, [B*T, top_k] expert ids used (when recorded; -1 past a packed row's end)."""


class LearnerWorker:
    def __init__(self, rank: int, world_size: int, sections: LearnerSections, model_dir: str, threads: int = 1) -> None:
        """Cheap construction; `setup` joins the process group and builds the model."""
        run_logs.to_role_log()  # this rank's output to its file in the run folder, when routed
        torch.set_num_threads(threads)
        self.rank, self.world_size = rank, world_size
        self.cfg = sections  # the learner's sections of the recipe (learner, algorithm, model, run, rollout)
        self.model_dir = model_dir

    def rendezvous_address(self) -> str:
        """A `tcp://host:port` on this rank's node for the process group (called on rank 0)."""
        import socket

        import ray

        host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{host}:{port}"

    def setup(self, init_method: str, collective_timeout_s: float = 300.0) -> None:
        # The device is a value from here on: tensors are created on it or moved to it, and the
        # collective backend follows from it (NCCL on CUDA, gloo on CPU).
        self.device = resolve_device(self.cfg.learner.device, self.rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # torchao's float8 GEMMs on CUDA (`torch._scaled_mm`) need every dimension a multiple of 16,
        # the token count too (it is the inner dimension of the weight-gradient GEMM): micro-batches
        # are right-padded to a multiple of 16 positions there.
        self.token_multiple = 16 if self.cfg.learner.precision == "fp8" and self.device.type == "cuda" else 1
        if not dist.is_initialized():
            dist.init_process_group(BACKENDS[self.device.type], init_method=init_method, rank=self.rank,
                                    world_size=self.world_size, timeout=timedelta(seconds=collective_timeout_s))
        model_dir = self.model_dir
        # What differs between the native Ling model and a transformers model (layers to shard,
        # routers, MTP layers, weight names) is the backend's to say: no branches on it below.
        self.backend = resolve_backend(model_dir, self.cfg.model.backend)
        torch.manual_seed(self.cfg.run.seed)
        self.model = self._build(model_dir)
        self.ref_model = self._build(model_dir) if self.cfg.algorithm.kl.needs_reference else None
        if self.ref_model is not None:
            self.ref_model.requires_grad_(False)
        self.config = self.model.config
        mtp_layers = self.backend.mtp_layers(self.model)
        self.train_mtp = self.cfg.model.mtp.enabled and bool(mtp_layers)
        if not self.train_mtp:
            for layer in mtp_layers:
                layer.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.gates = self.backend.routers(self.model)
        self.routing_layout = self.backend.routing_layout(model_dir)  # MoE layers, top_k, experts
        self.update_bias = not self.cfg.learner.freeze_expert_bias and bool(self.gates)
        if self.update_bias and any(g.expert_bias is None for g in self.gates):
            raise ValueError("learner.freeze_expert_bias: false needs a router expert bias, but the model's config "
                             "has moe_router_enable_expert_bias: false")
        self.optimizer, self.scheduler = build_optimizer(self.params, self.cfg.learner, self.cfg.run.steps)

    def _build(self, model_dir: str) -> nn.Module:
        """The model sharded from the start (built on the meta device, filled shard by shard from
        the checkpoint: see `ling_rl.learner.loading`), fp32 parameters on this rank's device."""
        def to_fp8(model: nn.Module) -> None:  # before fully_shard: FSDP2 must see the Float8Linears
            self.fp8_modules = apply_fp8(model, self.cfg.learner.fp8, self.device)

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if self.cfg.learner.precision in ("bf16", "fp8") else MixedPrecisionPolicy()
        model = build_sharded(model_dir, self.device, mp, convert=to_fp8 if self.cfg.learner.precision == "fp8" else None,
                              backend=self.backend)
        if self.cfg.learner.compile:
            # Per layer (the FSDP2 unit), dynamic shapes: micro-batches differ in rows and length.
            for layer in self.backend.trunk_layers(model):
                layer.compile(dynamic=True)
        return model

    # --- forward ---------------------------------------------------------------------------------

    def _forward(self, model: nn.Module, mb: TrainBatch, replay: bool = True, record: bool = False,
                 with_mtp: bool = False, behaviour: bool = True, entropy: bool = False) -> TokenOutputs:
        """`_token_logprobs` of micro-batch `mb` (its routes replayed when `replay`), packed when
        `learner.packing` (`ling_rl.learner.packing`: the model computes the real tokens only, the
        outputs come back in `mb`'s padded layout), else on the padded rows."""
        routes = mb.routed_experts if replay else None
        if not self.cfg.learner.packing:
            logp, out = self._token_logprobs(model, mb.input_ids, routes, record, with_mtp, behaviour, entropy)
            return TokenOutputs(logp, out.head.entropy, [h.logprobs for h in out.mtp_head or []], out.routed_experts)
        b, t = mb.input_ids.shape
        pack = Pack.of(_lengths(mb), t, self.token_multiple)
        if routes is not None:  # a token of the padding sequence has no route: the router chooses (-1)
            routes = [pack.pack(r.view(b, t, -1), fill=-1)[0] for r in routes]
        logp, out = self._token_logprobs(model, pack.pack(mb.input_ids), routes, record, with_mtp, behaviour, entropy,
                                         positions=pack.positions, seq_lens=pack.seq_lens)
        # A row's first token follows the previous row's last one in the pack: no log-prob (0, as padded).
        logp = pack.unpack(logp.masked_fill(pack.starts, 0.0))
        ent = None if out.head.entropy is None else pack.unpack(F.pad(out.head.entropy, (1, 0)))[:, 1:]
        mtp = [pack.unpack(h.logprobs)[:, : t - 1 - d] for d, h in enumerate(out.mtp_head or [], start=1)]
        used = None if out.routed_experts is None else \
            [pack.unpack(r[None], fill=-1).reshape(b * t, -1) for r in out.routed_experts]
        return TokenOutputs(logp, ent, mtp, used)

    def _token_logprobs(self, model: nn.Module, input_ids: torch.Tensor, replay: list[torch.Tensor] | None = None,
                        record: bool = False, with_mtp: bool = False, behaviour: bool = True, entropy: bool = False,
                        positions: torch.Tensor | None = None, seq_lens: list[int] | None = None):
        """Per position, the log-prob of its token given the ones before (0 at position 0).

        `behaviour`: under the distribution the engines sample from (the rollout's temperature,
        top-k and top-p, as vLLM applies them): the policy of the RL ratios, comparable to the
        engines' log-probs. Off: the model's own log-softmax (supervised DFT steps).

        The model never computes full logits: its head computes the log-probs from the final hidden
        states `learner.logprob_chunk_tokens` positions at a time (`out.head`, a `TokenLogprobs`
        over positions 1.., with the behaviour entropy when `entropy`; `out.mtp_head`, the MTP
        depths' plain log-probs)."""
        sampling = self.cfg.rollout
        chunk = self.cfg.learner.logprob_chunk_tokens

        def head(hidden: torch.Tensor, weight: torch.Tensor, depth: int) -> TokenLogprobs:
            # Depth d's hidden state at t predicts token t+1+d; MTP depths use the plain softmax.
            policy = behaviour and depth == 0
            return chunked_token_logprobs(
                hidden[:, :-1], weight, input_ids[:, depth + 1 :],
                *((sampling.temperature, sampling.top_p, sampling.top_k) if policy else ()),
                chunk_tokens=chunk, with_entropy=entropy and depth == 0)

        out = model(input_ids, positions=positions, routed_experts=replay, return_routed_experts=record,
                    with_mtp=with_mtp, head=head, checkpoint_layers=self.cfg.learner.activation_checkpointing,
                    seq_lens=seq_lens)
        return F.pad(out.head.logprobs, (1, 0)), out

    def _plan(self, batch: TrainBatch) -> list[torch.Tensor]:
        """This rank's micro-batches of `batch` (row indices; the same count on every rank)."""
        cfg = self.cfg.learner
        return plan_micro_batches(_lengths(batch), self.world_size, cfg.micro_batch_tokens, packed=cfg.packing,
                                  balanced=cfg.balance_ranks)[self.rank]

    @staticmethod
    def _trim(mb: TrainBatch, multiple: int = 1) -> TrainBatch:
        """Drop the right padding shared by all rows of a micro-batch, keeping the length a multiple
        of `multiple` (the batch's own length is one: `batch_to`)."""
        length = int(_lengths(mb).max()) if len(mb) else 1
        length = min(-(-length // multiple) * multiple, mb.input_ids.shape[1])
        return mb.map_positions(lambda t: t[:, :length])

    @torch.no_grad()
    def old_logprobs(self, batch: TrainBatch, record_routing: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Log-probs (and optionally the routing) of the current weights on the whole batch; every
        rank computes its rows and the result is all-gathered by summation (rows are disjoint).
        The batch's routes, when it carries some (r3), are replayed."""
        batch = batch_to(batch, self.device, self.token_multiple)
        b, t = batch.input_ids.shape
        logp_all = torch.zeros(b, t, device=self.device)
        n_moe = len(self.gates)
        routing = None
        if record_routing:
            k = self.routing_layout.top_k
            routing = torch.zeros(n_moe, b, t, k, dtype=torch.long, device=self.device)
        plan = self._plan(batch)
        for rows in plan:
            mb = self._trim(batch.select(rows if len(rows) else torch.tensor([0])), self.token_multiple)
            fwd = self._forward(self.model, mb, record=record_routing)
            logp = fwd.logprobs
            if len(rows):
                logp_all[rows, : logp.shape[1]] = logp
                if routing is not None:
                    for i, r in enumerate(fwd.routed_experts):
                        routing[i, rows, : logp.shape[1]] = r.view(len(rows), -1, k)
        dist.all_reduce(logp_all)
        replay = None
        if routing is not None:
            dist.all_reduce(routing)
            replay = [routing[i].reshape(b * t, k) for i in range(n_moe)]
        return logp_all, replay

    # --- training ----------------------------------------------------------------------------------

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One rollout batch: `updates_per_batch` optimizer steps over strided mini-batches, all at
        the LR of this RL step, then one step of the LR schedule. A batch that `carries_signal`
        rejects is skipped whole: no optimizer or schedule step (`skipped` = 1)."""
        cfg = self.cfg.learner
        lr = self.scheduler.get_last_lr()[0]  # the LR this step's updates use
        # The DFT warm start is over once RL trains: its AdamW state (8 bytes per parameter per rank,
        # never checkpointed) would sit beside the RL optimizer's (ling_rl/commands/plan.py counts one).
        self.__dict__.pop("sft_optimizer", None)
        if not carries_signal(batch, self.cfg.algorithm):
            return {"skipped": 1.0, "lr": lr}
        batch = batch_to(batch, self.device, self.token_multiple)
        updates = min(cfg.updates_per_batch, len(batch))
        replay_mode = self.cfg.rollout.routing_replay
        routing: dict[str, float] = {}
        if replay_mode == "r3":  # the engine's routes, replayed in every forward below
            routing = self.routing_mismatch(batch)
        else:
            batch.routed_experts = None
        if updates > 1:
            # r2 records the old-policy pass's routing; r3 too, so the positions the engine gave no
            # route for are routed alike in every update (the given ones stay the engine's). With one
            # update there is no pass to run: its forward is the old policy, routing as that pass
            # would have (its log-probs stand in for the old ones, detached).
            batch.old_logprobs, replay = self.old_logprobs(batch, record_routing=replay_mode != "none")
            batch.routed_experts = replay
        sums: dict[str, float] = {}
        for u in range(updates):
            mini = batch.select(torch.arange(u, len(batch), updates))
            self._accumulate(sums, self._update(mini, measure_gap=u == 0))
        self.scheduler.step()
        return {**_finalize(sums, updates), **routing, "skipped": 0.0, "lr": lr}

    @torch.no_grad()
    def routing_mismatch(self, batch: TrainBatch) -> dict[str, float]:
        """R3's numbers: per MoE layer, the share of real tokens whose experts in a forward of the
        current weights without replay differ from the engine's (`ling_rl.routing`), and that
        forward's train/inference gap (`routing/gap_mean_without_replay`, to set beside
        `sync/gap_mean`, measured with replay). One extra forward per step. `batch` is on the device."""
        moe = self.routing_layout.moe_layers
        if batch.routed_experts is None:
            raise ValueError("rollout.routing_replay is r3, but the batch carries no routed experts "
                             "(the engines return them only with routing_replay r3 on GPU)")
        b, t = batch.input_ids.shape
        check_routes(batch.routed_experts, b, t, len(moe), self.routing_layout.top_k, self.routing_layout.num_experts)
        counts = torch.zeros(len(moe), 2, dtype=torch.long, device=self.device)
        gap = torch.zeros(2, dtype=torch.float64, device=self.device)
        plan = self._plan(batch)
        for rows in plan:
            mb = self._trim(batch.select(rows if len(rows) else torch.tensor([0])), self.token_multiple)
            fwd = self._forward(self.model, mb, replay=False, record=True)
            logp = fwd.logprobs
            if len(rows):
                n, length = mb.input_ids.shape
                real = torch.arange(length, device=self.device)[None, :] < _lengths(mb)[:, None]
                counts += mismatch_counts(fwd.routed_experts, mb.routed_experts, real.reshape(-1))
                response = mb.response_mask.bool()
                gap += torch.stack([(logp - mb.inf_logprobs).abs()[response].sum().double(), response.sum().double()])
        dist.all_reduce(counts)
        dist.all_reduce(gap)
        return {**mismatch_metrics(counts, moe), "routing/gap_mean_without_replay": float(gap[0] / gap[1].clamp(min=1))}

    def _update(self, batch: TrainBatch, measure_gap: bool) -> dict[str, float]:
        algo = self.cfg.algorithm
        mask = batch.response_mask.bool()
        denominator = max(float(aggregation_count(mask, algo.loss)), 1.0)
        plan = self._plan(batch)
        sums: dict[str, float] = {}
        # Tokens routed to each expert of each MoE layer in this update (for the expert-bias update).
        loads = torch.zeros(len(self.gates), self.routing_layout.num_experts, dtype=torch.long, device=self.device) \
            if self.update_bias else None
        for rows in plan:
            empty = len(rows) == 0
            # An empty micro-batch still runs (FSDP2 ranks must issue the same collectives) with zero loss.
            mb = self._trim(batch.select(rows if not empty else torch.tensor([0])), self.token_multiple)
            fwd = self._forward(self.model, mb, with_mtp=self.train_mtp, record=loads is not None, entropy=True)
            logp = fwd.logprobs
            if loads is not None and not empty:
                _count_routed(loads, mb, fwd.routed_experts)
            old = mb.old_logprobs if mb.old_logprobs is not None else logp.detach()
            ref = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref = self._forward(self.ref_model, mb, replay=False).logprobs
            loss, metrics = policy_loss(logp, old, mb.advantages, mb.unit_ids, mb.response_mask, algo,
                                        inf_logp=mb.inf_logprobs, ref_logp=ref, denominator=denominator)
            values = metrics.as_dict()
            response = mb.response_mask[:, 1:].bool()  # entropy is over positions 1..
            values["entropy"] = float(fwd.entropy[response].mean()) if response.any() else 0.0
            if self.train_mtp:
                mtp = self._mtp_loss(mb, fwd.mtp_logprobs) * (float(mb.response_mask.sum()) / denominator)
                loss = loss + self.cfg.model.mtp.loss_weight * mtp
                values["mtp_loss"] = float(mtp.detach())
            scale = 0.0 if empty else 1.0
            # FSDP2 averages gradients over ranks; each rank's loss is its share of the batch mean.
            (loss * scale * self.world_size).backward()
            tokens = 0.0 if empty else float(mask[rows].sum())
            if measure_gap:  # on every rank, a rank without rows too: all ranks must reduce the same keys
                gap = (old - mb.inf_logprobs).abs()[mb.response_mask.bool()]
                values["sync/gap_mean"] = float(gap.mean()) if gap.numel() else 0.0
                values["sync/gap_max"] = float(gap.max()) if gap.numel() else 0.0
            if measure_gap and mb.version_lag is not None:  # asynchronous RL: the gap per version lag
                lags = mb.version_lag[mb.response_mask.bool()]
                for lag in range(self.cfg.rollout.max_staleness + 1):  # every rank logs the same keys
                    at = lags == lag
                    weight = 0.0 if empty else float(at.sum())
                    self._accumulate(sums, {f"sync/gap_mean_lag{lag}": float(gap[at].mean()) if weight else 0.0},
                                     weight=weight)
            self._accumulate(sums, {k: v * scale for k, v in values.items()}, weight=tokens)
        grad_norm = self._optimizer_step(self.optimizer)
        if loads is not None:
            self._update_expert_bias(loads)
        reduced = _all_reduce(sums, self.device)
        reduced["grad_norm"] = grad_norm
        return reduced

    @torch.no_grad()
    def _update_expert_bias(self, loads: torch.Tensor) -> None:
        """Aux-loss-free balancing (DeepSeek-V3): raise the bias of under-loaded experts and lower
        that of over-loaded ones by a fixed step. `loads` [layers, experts] is summed over ranks
        first, so every rank applies the same update to its (unsharded) bias buffers."""
        dist.all_reduce(loads)
        rate = self.cfg.learner.expert_bias_update_rate
        for gate, load in zip(self.gates, loads.float(), strict=True):
            gate.expert_bias.add_(rate * torch.sign(load.mean() - load))

    def sft_step(self, batch: TrainBatch, lr: float) -> dict[str, float]:
        """One supervised step (DFT): mean cross-entropy of the response tokens of the whole batch,
        with its own AdamW so the RL optimizer's state starts clean after the warm start."""
        if not hasattr(self, "sft_optimizer"):
            self.sft_optimizer = torch.optim.AdamW(self.params, lr=lr, betas=self.cfg.learner.betas, foreach=False)
        batch = batch_to(batch, self.device, self.token_multiple)
        denominator = max(float(batch.response_mask.sum()), 1.0)
        plan = self._plan(batch)
        sums: dict[str, float] = {}
        for rows in plan:
            empty = len(rows) == 0
            mb = self._trim(batch.select(rows if not empty else torch.tensor([0])), self.token_multiple)
            logp = self._forward(self.model, mb, replay=False, behaviour=False).logprobs
            mask = mb.response_mask.bool()
            nll = -(logp * mask).sum() / denominator
            (nll * (0.0 if empty else 1.0) * self.world_size).backward()
            tokens = 0.0 if empty else float(mask.sum())
            correct = float(((logp > -0.6931) & mask).sum())  # p > 0.5: the token is the argmax
            self._accumulate(sums, {"dft/loss": float(nll.detach()) * (0.0 if empty else 1.0) * denominator / max(tokens, 1.0),
                                    "dft/token_acc": correct / max(tokens, 1.0)}, weight=tokens)
        grad_norm = self._optimizer_step(self.sft_optimizer)
        reduced = _all_reduce(sums, self.device)
        reduced["dft/grad_norm"] = grad_norm
        return reduced

    def _optimizer_step(self, optimizer: torch.optim.Optimizer) -> float:
        """Clip the accumulated gradients and step; returns the global gradient norm."""
        for p in self.params:
            # An expert no token was routed to has no gradient; a zero one keeps its optimizer state
            # present (and checkpointable) from the first step on.
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.learner.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _mtp_loss(self, mb: TrainBatch, mtp_logprobs: list[torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of each MTP depth d on the response tokens it predicts (t+1+d), from
        the depth's log-probs of those tokens ([B, T-1-d], chunked like the policy's)."""
        losses = []
        for d, logp in enumerate(mtp_logprobs, start=1):
            mask = mb.response_mask[:, d + 1 :].bool()
            losses.append(-(logp * mask).sum() / mask.sum().clamp(min=1))
        return torch.stack(losses).mean()

    @staticmethod
    def _accumulate(sums: dict[str, float], values: dict[str, float], weight: float = 1.0) -> None:
        for key, value in values.items():
            if key in _SUMMED or key == "grad_norm":
                sums[key] = sums.get(key, 0.0) + value
            elif _is_max(key):
                sums[key] = max(sums.get(key, float("-inf")), value) if weight else sums.get(key, float("-inf"))
            elif _is_min(key):
                sums[key] = min(sums.get(key, float("inf")), value) if weight else sums.get(key, float("inf"))
            else:
                sums[key] = sums.get(key, 0.0) + value * weight
                sums[f"__w/{key}"] = sums.get(f"__w/{key}", 0.0) + weight

    # --- weights and checkpoints -------------------------------------------------------------------

    def _full_state(self) -> dict[str, torch.Tensor]:
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    # Weight sync to the rollout engines, layer by layer (ling_rl/weightsync/methods.py drives these;
    # every rank takes part: gathering FSDP2 shards is a collective; rank 0 sends).

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def write_weight_buckets(self, prefix: str, dtype: str, bucket_bytes: int) -> dict:
        from ling_rl.weightsync.sender import write_buckets

        return write_buckets(self.model, getattr(torch, dtype), bucket_bytes, prefix, sender=self.rank == 0)

    def put_weight_buckets(self, dtype: str, bucket_bytes: int) -> dict:
        from ling_rl.weightsync.sender import put_buckets

        return put_buckets(self.model, getattr(torch, dtype), bucket_bytes, sender=self.rank == 0)

    def weight_metadata(self, dtype: str) -> list[tuple[str, str, list[int]]]:
        from ling_rl.weightsync.stream import weight_metadata

        return weight_metadata(self.model, getattr(torch, dtype))

    def init_weight_broadcast(self, master_address: str, master_port: int, world_size: int) -> None:
        """Rank 0 joins the NCCL group of the engines' workers as its rank 0 (written for CUDA,
        not run on a GPU yet); the other ranks hold no communicator."""
        self._weight_group = None
        if self.device.type != "cuda":
            raise RuntimeError(f"rollout.weight_sync.method=nccl needs the learner on CUDA, but learner.device resolved to "
                               f"{self.device.type}; set rollout.weight_sync.method to shm_file or object_store")
        if self.rank == 0:
            from vllm.distributed.weight_transfer.nccl_common import trainer_init

            self._weight_group = trainer_init({"master_address": master_address, "master_port": master_port,
                                               "world_size": world_size})

    def broadcast_weights(self, dtype: str, bucket_bytes: int) -> dict:
        from ling_rl.weightsync.sender import broadcast

        return broadcast(self.model, getattr(torch, dtype), bucket_bytes, getattr(self, "_weight_group", None))

    def export_hf(self, out_dir: str, tokenizer_dir: str) -> None:
        state = self._full_state()
        if self.rank == 0:
            self.backend.save(self.model, out_dir, tokenizer_dir=tokenizer_dir, state=state)
        dist.barrier()

    def save_checkpoint(self, ckpt_dir: str) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(ckpt_dir, LEARNER_DIR))
        if self.rank == 0:
            torch.save({"scheduler": self.scheduler.state_dict()}, os.path.join(ckpt_dir, "learner_extra.pt"))
        torch.save(rng_state(self.device), os.path.join(ckpt_dir, f"rng_rank{self.rank}.pt"))
        dist.barrier()

    def load_checkpoint(self, ckpt_dir: str) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=os.path.join(ckpt_dir, LEARNER_DIR))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(torch.load(os.path.join(ckpt_dir, "learner_extra.pt"))["scheduler"])
        set_rng_state(torch.load(os.path.join(ckpt_dir, f"rng_rank{self.rank}.pt")), self.device)
        dist.barrier()

    def ping(self) -> int:
        return self.rank

    def shutdown(self) -> None:
        if dist.is_initialized():
            # Ranks leave together: a rank tearing down gloo while a peer still has work in flight
            # aborts the peer's process.
            dist.barrier()
            dist.destroy_process_group()


def carries_signal(batch: TrainBatch, algo: AlgorithmConfig) -> bool:
    """Whether training on `batch` can change the policy: it has a response token to train on, and
    either a non-zero advantage on one, or a KL term (whose gradient does not depend on the
    advantages). The MTP loss alone does not count: it is an auxiliary of the policy update.

    A batch without signal (e.g. dynamic sampling's fallback, where every group is flat) would
    still move the weights through AdamW's momentum and weight decay and advance the LR schedule;
    the learner skips it instead. Every rank gets the whole batch, so all ranks decide alike."""
    mask = batch.response_mask.bool()
    if not mask.any():
        return False
    return algo.kl.coef > 0 or bool((batch.advantages[mask] != 0).any())


def _is_max(key: str) -> bool:
    """A metric reduced by maximum over micro-batches, ranks and updates (`x_max`, `group/max_x`):
    a mean of per-micro-batch maxima would depend on how rows were split."""
    return key.endswith("_max") or key.rsplit("/", 1)[-1].startswith("max_")


def _is_min(key: str) -> bool:
    return key.endswith("_min") or key.rsplit("/", 1)[-1].startswith("min_")


def _count_routed(loads: torch.Tensor, mb: TrainBatch, routed: list[torch.Tensor]) -> None:
    """Add to `loads` [layers, experts] the experts each real (non-padding) token of `mb` was routed to."""
    b, t = mb.input_ids.shape
    valid = torch.arange(t, device=mb.input_ids.device)[None, :] < _lengths(mb)[:, None]
    for layer, ids in enumerate(routed):
        loads[layer] += torch.bincount(ids.view(b, t, -1)[valid].reshape(-1), minlength=loads.shape[1])


def _lengths(batch: TrainBatch) -> torch.Tensor:
    """Per row, the position after its last response token (prompt + response length)."""
    t = batch.response_mask.shape[1]
    mask = batch.response_mask.bool()
    last = t - mask.flip(1).int().argmax(1)
    return torch.where(mask.any(1), last, torch.ones_like(last))


def _all_reduce(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """Reduce per-rank metric sums over ranks (tensors on `device`: NCCL reduces CUDA tensors only)."""
    keys = sorted(sums)
    _check_same_keys(keys, device)
    groups = {
        dist.ReduceOp.MAX: [k for k in keys if _is_max(k)],
        dist.ReduceOp.MIN: [k for k in keys if _is_min(k)],
        dist.ReduceOp.SUM: [k for k in keys if not (_is_max(k) or _is_min(k))],
    }
    out: dict[str, float] = {}
    for op, names in groups.items():
        if names:
            t = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=device)
            dist.all_reduce(t, op=op)
            out.update(zip(names, t.tolist()))
    result = {}
    for key, value in out.items():
        if key.startswith("__w/"):
            continue
        if f"__w/{key}" in out:
            value = value / out[f"__w/{key}"] if out[f"__w/{key}"] else 0.0
        result[key] = value
    return result


def _check_same_keys(keys: list[str], device: torch.device) -> None:
    """Fail on every rank alike when the ranks' metric keys differ. The reductions below send one
    tensor per group of keys: a rank with other keys would send a tensor of another length, which
    hangs the collective or crashes it. One small all-reduce of the key count and a checksum, by
    MAX of the values and of their negatives, gives every rank the same maximum and minimum."""
    digest = zlib.crc32("\n".join(keys).encode())
    t = torch.tensor([len(keys), digest, -len(keys), -digest], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t[0] != -t[2] or t[1] != -t[3]:
        raise RuntimeError(f"learner rank {dist.get_rank()}: the ranks recorded different metric keys (this rank's: "
                           f"{keys}); every rank must record the same keys, a rank without rows too")


def _finalize(sums: dict[str, float], updates: int) -> dict[str, float]:
    """Per-update metrics of one rollout batch: extremes over the updates, the rest averaged (the
    gap is measured on the first update only)."""
    kept = ("sync/gap_mean", "sync/gap_max")
    return {k: (v if k in kept or k.startswith("sync/gap_mean_lag") or _is_max(k) or _is_min(k) else v / updates)
            for k, v in sums.items()
            if not k.startswith("__w/")}
