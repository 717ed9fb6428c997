"""The learner's side of the weight sync, device-agnostic, on CPU: the layer-by-layer gather of
FSDP2 shards gives exactly `inference_weights(full state)`, in buckets, never holding more than
one layer plus one bucket; the method choice; the CPU-only engine arguments."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ling_rl.models.hf_io import inference_weights, load_model
from ling_rl.rollout.config import RolloutConfig
from ling_rl.weightsync.methods import SYNC_METHODS, WeightSync, choose_method
from ling_rl.weightsync.stream import buckets, gather_layers, nbytes, weight_metadata


class _Live:
    """Bytes of the tensors a stream produced that are still alive (weakref-tracked)."""

    def __init__(self) -> None:
        self.bytes = 0

    def track(self, groups):
        for group in groups:
            for t in group.values():
                n = t.numel() * t.element_size()
                self.bytes += n
                weakref.finalize(t, self._free, n)
            yield group
            del group  # hold nothing while the next group is gathered

    def _free(self, n: int) -> None:
        self.bytes -= n


def _gather(rank: int, world: int, init: str, model_dir: str, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model = load_model(model_dir)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    full = inference_weights(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
                             model.config)
    layer_bytes = max(nbytes(g) for g in gather_layers(model, torch.float32))
    bucket_bytes = 64 << 10
    live, got, peak, sizes = _Live(), {}, 0, []
    for bucket in buckets(live.track(gather_layers(model, torch.float32)), bucket_bytes):
        gc.collect()
        peak = max(peak, live.bytes)
        sizes.append(nbytes(bucket))
        got.update({k: v.clone() for k, v in bucket.items()})
        del bucket
    meta = weight_metadata(model, torch.float32)
    if rank == 0:
        torch.save({"full": full, "got": got, "peak": peak, "layer_bytes": layer_bytes, "bucket_bytes": bucket_bytes,
                    "sizes": sizes, "meta": meta, "order": list(got)}, out)
    dist.barrier()
    dist.destroy_process_group()


def test_layer_by_layer_buckets_equal_the_full_inference_weights(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.pt"
    mp.spawn(_gather, args=(2, f"file://{tmp_path}/pg", str(tiny_dir), str(out)), nprocs=2)
    r = torch.load(out)
    assert set(r["got"]) == set(r["full"])
    for name, t in r["full"].items():
        assert torch.equal(r["got"][name], t), name
    assert len(r["sizes"]) > 1, "the tiny model should need several 64 KiB buckets"
    # Held at any time: the layer being bucketed plus the bucket being shipped (a bucket is full
    # once the next layer's first tensor does not fit; a tensor larger than a bucket is one alone).
    largest = max(t.numel() * t.element_size() for t in r["full"].values())
    assert r["peak"] <= r["layer_bytes"] + max(r["bucket_bytes"], largest)
    assert r["peak"] < sum(t.numel() * t.element_size() for t in r["full"].values()) / 2
    # The metadata the NCCL engines size their receive buffers by matches the stream, in order.
    assert [m[0] for m in r["meta"]] == r["order"]
    assert all(list(r["full"][n].shape) == s and str(r["full"][n].dtype) == f"torch.{d}" for n, d, s in r["meta"])


def test_weights_travel_in_the_engine_dtype_except_the_router(tiny_dir: Path) -> None:
    model = load_model(tiny_dir)
    sent = {k: v for g in gather_layers(model, torch.bfloat16) for k, v in g.items()}
    full = inference_weights(model.state_dict(), model.config)
    assert set(sent) == set(full)
    router = [k for k in sent if ".mlp.gate." in k]
    assert router and all(sent[k].dtype == torch.float32 and torch.equal(sent[k], full[k]) for k in router)
    assert all(sent[k].dtype == torch.bfloat16 for k in sent if k not in router)
    assert [(n, d) for n, d, _ in weight_metadata(model, torch.bfloat16)] == [(k, str(v.dtype)[6:]) for k, v in sent.items()]


def test_a_tensor_larger_than_a_bucket_travels_alone() -> None:
    groups = [{"a": torch.zeros(10), "b": torch.zeros(100)}, {"c": torch.zeros(5), "d": torch.zeros(5)}]
    assert [list(b) for b in buckets(groups, bucket_bytes=60)] == [["a"], ["b"], ["c", "d"]]


def test_auto_chooses_by_platform_and_node() -> None:
    assert choose_method("auto", engines_on_cuda=True, learner_node="a", engine_nodes=["b"]) == "nccl"
    assert choose_method("auto", engines_on_cuda=False, learner_node="a", engine_nodes=["a", "a"]) == "shm_file"
    assert choose_method("auto", engines_on_cuda=False, learner_node="a", engine_nodes=["a", "b"]) == "object_store"
    assert choose_method("object_store", engines_on_cuda=False, learner_node="a", engine_nodes=["a"]) == "object_store"
    assert choose_method("auto", engines_on_cuda=False) == "shm_file"  # before the engines exist: no NCCL engine
    with pytest.raises(ValueError, match="rollout.weight_sync.method: nccl needs the engines on GPUs"):
        choose_method("nccl", engines_on_cuda=False)
    assert set(SYNC_METHODS) == {"shm_file", "object_store", "nccl"}
    assert all(issubclass(c, WeightSync) for c in SYNC_METHODS.values())
    assert [n for n, c in SYNC_METHODS.items() if c.needs_nccl_engines] == ["nccl"]


def test_rollout_keys() -> None:
    cfg = RolloutConfig.model_validate({"dtype": "bfloat16", "enforce_eager": False, "max_num_seqs": 64,
                                        "weight_sync": {"method": "object_store", "bucket_mib": 64}})
    assert cfg.engine_dtype("float32") == "bfloat16" and RolloutConfig().engine_dtype("float32") == "float32"
    with pytest.raises(Exception, match="weight_sync.method"):
        RolloutConfig.model_validate({"weight_sync": {"method": "carrier_pigeon"}})
    with pytest.raises(Exception, match="max_num_seqs"):
        RolloutConfig.model_validate({"max_num_seqs": 0})


def test_engine_arguments_per_platform() -> None:
    """On CPU: eager, whole prefills; on GPU: CUDA graphs by default, and the CPU adapter module
    is never imported (checked in a fresh interpreter)."""
    code = (
        "import sys\n"
        "from ling_rl.rollout.vllm_engine import llm_kwargs\n"
        "gpu = llm_kwargs('m', 'bfloat16', 0, 4096, 0.8, None, 128, cpu=False)\n"
        "assert 'ling_rl.rollout.cpu_platform' not in sys.modules\n"
        "assert gpu['enforce_eager'] is False and gpu['gpu_memory_utilization'] == 0.8 and gpu['max_num_seqs'] == 128\n"
        "assert 'enable_chunked_prefill' not in gpu\n"
        "assert llm_kwargs('m', 'bfloat16', 0, 4096, 0.8, True, None, cpu=False)['enforce_eager'] is True\n"
        "cpu = llm_kwargs('m', 'float32', 0, 512, 0.8, None, None, cpu=True)\n"
        "assert cpu['enforce_eager'] is True and cpu['enable_chunked_prefill'] is False and 'max_num_seqs' not in cpu\n"
        "assert 'gpu_memory_utilization' not in cpu\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


class _Rank0:
    """`learner.workers[0].rendezvous_address.remote()` gives a "ref" `_Recorder.wait` resolves."""

    class rendezvous_address:  # noqa: N801 - stands for a Ray actor method
        @staticmethod
        def remote() -> str:
            return "rendezvous_address"


class _Recorder:
    """Stands for a LearnerGroup (`role` learner) or a RolloutGroup: records the calls `NcclSync`
    makes, in order; `wait` answers `results[method]`."""

    def __init__(self, log: list, role: str, n: int, results: dict) -> None:
        self.log, self.role, self.n, self.results = log, role, n, results
        self.engines = list(range(n))
        self.calls: dict[str, list] = {}
        self.version = 0
        self.workers = [_Rank0()]

    def submit(self, method: str, *args):
        if self.role == "rollout":
            args_of = args[0] if args else (lambda i: ())
            per = [args_of(i) for i in range(self.n)]
        else:
            per = [args] * self.n
        self.calls[method] = per
        self.log.append((self.role, "submit", method))
        return [method] * self.n

    def wait(self, refs: list, what: str) -> list:
        self.log.append((self.role, "wait", refs[0]))
        return [self.results.get(r) for r in refs]

    def set_version(self, version: int) -> None:
        self.version = version


def test_nccl_sync_joins_every_engine_worker_and_receives_while_the_learner_sends() -> None:
    """The NCCL method's orchestration, without NCCL: one group of learner rank 0 + every engine
    worker with distinct ranks; the engines' `update_weights` is started before the learner's
    broadcast is waited on; what the engines get parses as vLLM's NCCL init/update infos."""
    nccl_engine = pytest.importorskip("vllm.distributed.weight_transfer.nccl_engine")  # not on the GPU check box
    NCCLWeightTransferInitInfo, NCCLWeightTransferUpdateInfo = (nccl_engine.NCCLWeightTransferInitInfo,
                                                                nccl_engine.NCCLWeightTransferUpdateInfo)
    from ling_rl.weightsync.methods import NcclSync

    log: list = []
    meta = [("model.word_embeddings.weight", "bfloat16", [1024, 128]), ("model.layers.1.mlp.gate.weight", "float32", [8, 128])]
    learner = _Recorder(log, "learner", 2, {"weight_metadata": meta, "rendezvous_address": "tcp://10.0.0.7:29555",
                                             "broadcast_weights": {"gather_s": 0.1, "transfer_s": 0.2}})
    rollout = _Recorder(log, "rollout", 3, {"finish_weight_update": 0.05})
    sync = NcclSync(learner, rollout, RolloutConfig(tensor_parallel_size=2, weight_sync={"method": "nccl", "bucket_mib": 8}),
                    "bfloat16", "t")
    sync.setup()
    infos = [NCCLWeightTransferInitInfo(**args[0]) for args in rollout.calls["init_weight_transfer"]]
    assert [i.rank_offset for i in infos] == [1, 3, 5] and {i.world_size for i in infos} == {7}
    assert {(i.master_address, i.master_port, i.packed, i.packed_buffer_size_bytes) for i in infos} == {("10.0.0.7", 29555, True, 8 << 20)}
    assert learner.calls["init_weight_broadcast"][0] == ("10.0.0.7", 29555, 7)
    # Both sides are started before either is waited on (they rendezvous together).
    assert log[1:5] == [("rollout", "submit", "init_weight_transfer"), ("learner", "submit", "init_weight_broadcast"),
                        ("learner", "wait", "init_weight_broadcast"), ("rollout", "wait", "init_weight_transfer")]
    NCCLWeightTransferUpdateInfo(**sync.update_info)
    assert sync.update_info["names"] == [m[0] for m in meta]
    log.clear()
    metrics = sync.sync(version=4)
    assert log.index(("rollout", "submit", "update_weights")) < log.index(("learner", "wait", "broadcast_weights"))
    assert log.index(("rollout", "wait", "update_weights")) < log.index(("rollout", "submit", "finish_weight_update"))
    assert rollout.calls["update_weights"] == [(sync.update_info,)] * 3
    assert rollout.version == 4 and metrics["sync/gather_s"] == 0.1 and metrics["sync/load_s"] == 0.05


@pytest.mark.gpu
def test_gather_and_bucket_files_on_cuda_with_one_nccl_rank(tiny_dir: Path, tmp_path: Path) -> None:
    """The learner side of the sync on CUDA (FSDP2 on one NCCL rank): the stream stays on the
    device, in bf16 with the router in fp32, equals the full state's inference weights, and the
    `shm_file` buckets land as CPU safetensors files. (The NCCL broadcast itself needs vLLM, which
    the GPU check machine lacks.)"""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from ling_rl.weightsync.sender import write_buckets

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        torch.cuda.set_device(0)
        model = load_model(tiny_dir).to("cuda")
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        full = inference_weights(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
                                 model.config)
        sent = {k: v for g in gather_layers(model, torch.bfloat16) for k, v in g.items()}
        assert set(sent) == set(full) and all(t.is_cuda for t in sent.values())
        for name, t in sent.items():
            assert t.dtype == (torch.float32 if ".mlp.gate." in name else torch.bfloat16), name
            assert torch.equal(t.cpu(), full[name].to(t.dtype)), name
        out = write_buckets(model, torch.bfloat16, 256 << 10, str(tmp_path / "b"), sender=True)
        files = {k: v for path in out["paths"] for k, v in load_file(path).items()}
        assert len(out["paths"]) > 1 and set(files) == set(full)
        assert all(torch.equal(files[k], sent[k].cpu()) for k in files)
    finally:
        dist.destroy_process_group()
