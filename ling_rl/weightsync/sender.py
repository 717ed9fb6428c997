"""The learner side of the weight sync: gather layer by layer, then write, put or broadcast.

Every learner rank calls the same function (gathering FSDP2 shards is a collective); only the
sender (rank 0) keeps and ships what it gathers. Each returns the sender's timings:
`gather_s` (all-gathering shards, casting, Hugging Face naming) and `transfer_s` (the rest of
the time on the learner: file writes, object-store puts, or the broadcast).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ling_rl.models.hf_io import write_safetensors_atomic
from ling_rl.weightsync.stream import buckets, gather_layers

T = TypeVar("T")


class Stopwatch:
    """Seconds spent producing the items of wrapped iterators."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        it = iter(items)
        while True:
            started = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - started
                return
            self.seconds += time.perf_counter() - started
            yield item


def _bucket_stream(model: nn.Module, dtype: torch.dtype, bucket_bytes: int, watch: Stopwatch) -> Iterator[dict[str, torch.Tensor]]:
    return watch.wrap(buckets(gather_layers(model, dtype), bucket_bytes))


def write_buckets(model: nn.Module, dtype: torch.dtype, bucket_bytes: int, prefix: str, sender: bool) -> dict[str, Any]:
    """`shm_file`: the sender writes bucket k to `{prefix}.{k}.safetensors` (atomically)."""
    watch, started, paths = Stopwatch(), time.perf_counter(), []
    for k, bucket in enumerate(_bucket_stream(model, dtype, bucket_bytes, watch)):
        if sender:
            path = Path(f"{prefix}.{k}.safetensors")
            write_safetensors_atomic(bucket, path)
            paths.append(str(path))
        del bucket
    return {"paths": paths, "gather_s": watch.seconds, "transfer_s": time.perf_counter() - started - watch.seconds}


def put_buckets(model: nn.Module, dtype: torch.dtype, bucket_bytes: int, sender: bool) -> dict[str, Any]:
    """`object_store`: the sender puts each bucket, as safetensors bytes, into Ray's object store
    (bytes, not tensors: they pickle anywhere and the engine writes them to a file as they are)."""
    import ray
    from safetensors.torch import save

    watch, started, refs = Stopwatch(), time.perf_counter(), []
    for bucket in _bucket_stream(model, dtype, bucket_bytes, watch):
        if sender:
            refs.append(ray.put(save({k: v.detach().contiguous().cpu() for k, v in bucket.items()}, metadata={"format": "pt"})))
        del bucket
    return {"refs": refs, "gather_s": watch.seconds, "transfer_s": time.perf_counter() - started - watch.seconds}


def broadcast(model: nn.Module, dtype: torch.dtype, bucket_bytes: int, group: Any) -> dict[str, Any]:
    """`nccl`: the sender broadcasts the layer-by-layer stream, packed into buffers of
    `bucket_bytes`, over `group` (vLLM's `PyNcclCommunicator` joined with every engine worker;
    None on other ranks, which only take part in the gathers). The engines unpack with the same
    buffer size and the names, dtypes and shapes of `weight_metadata`. Written for CUDA, not run
    on a GPU yet."""
    watch, started = Stopwatch(), time.perf_counter()
    pairs = (pair for bucket in _bucket_stream(model, dtype, bucket_bytes, watch) for pair in bucket.items())
    if group is None:
        for _ in pairs:
            pass
    else:
        from vllm.distributed.weight_transfer.packed_tensor import (
            DEFAULT_PACKED_NUM_BUFFERS,
            packed_nccl_broadcast_producer,
        )

        packed_nccl_broadcast_producer(iterator=pairs, group=group, src=0, post_iter_func=lambda item: item[1],
                                       buffer_size_bytes=bucket_bytes, num_buffers=DEFAULT_PACKED_NUM_BUFFERS)
        torch.cuda.current_stream().synchronize()  # the broadcasts are enqueued, not done, until here
    return {"gather_s": watch.seconds, "transfer_s": time.perf_counter() - started - watch.seconds}


class InProcessLearner:
    """The learner side of a sync for one unsharded model in this process (the only rank, so the
    sender), with the `submit` / `wait` calls a `WeightSync` makes of a `LearnerGroup`: for
    benchmarks and tests of the sync methods without learner actors."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def submit(self, method: str, *args: Any) -> list[dict[str, Any]]:
        calls = {
            "write_weight_buckets": lambda prefix, dtype, bucket_bytes: write_buckets(
                self.model, getattr(torch, dtype), bucket_bytes, prefix, sender=True),
            "put_weight_buckets": lambda dtype, bucket_bytes: put_buckets(
                self.model, getattr(torch, dtype), bucket_bytes, sender=True),
        }
        return [calls[method](*args)]

    def wait(self, results: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
        return results
