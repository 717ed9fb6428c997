"""FP8 weights leave the learner as plain tensors (issue 22 item 7): with float8 all-gather,
torchao wraps the converted linears' weights in a tensor subclass; the weight sync gathers layer
by layer (`module.state_dict()` of each layer, not the root's), and the HF export gathers the
whole model: both must hand safetensors and the engines the master weights themselves, cast to
the wire dtype. torchao's float8 conversion, emulated on CPU."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.driver.session import learner_sections
from tests.learner.helpers import leave, random_batch


def _sync(rank: int, world: int, init: str, model_dir: str, out: str) -> None:
    from safetensors.torch import load_file
    from torch.distributed.tensor import DTensor

    from ling_rl.learner.worker import LearnerWorker
    from ling_rl.models.hf_io import inference_weights
    from ling_rl.weightsync.stream import wire_dtype

    sections = learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp8", "lr": 1e-3, "micro_batch_tokens": 200, "num_ranks": world,
                    "fp8": {"fsdp_float8_all_gather": True, "emulate": True}},
        "algorithm": {"mismatch": {"type": "none"}},
    }))
    worker = LearnerWorker(rank, world, sections, model_dir)
    worker.setup(init)
    worker.train_step(random_batch(1024, seed=0))  # the weights the engines get are trained ones
    qkv = worker.model.model.layers[0].attention.query_key_value.weight
    wrapped = type(qkv._local_tensor if isinstance(qkv, DTensor) else qkv).__name__
    master = worker._full_state()
    prefix = Path(out).parent / "sync"
    worker.write_weight_buckets(str(prefix), "bfloat16", 1 << 30)
    synced = {k: v for path in sorted(prefix.parent.glob("sync.*.safetensors")) for k, v in load_file(path).items()}
    expected = inference_weights({k: v.to(wire_dtype(k, v, torch.bfloat16)) for k, v in master.items()},
                                 worker.model.config)
    export = Path(out).parent / "export"
    worker.export_hf(str(export), model_dir)
    exported = {k: v for path in sorted(export.glob("*.safetensors")) for k, v in load_file(path).items()}
    torch.save({"wrapped": wrapped, "synced": synced, "expected": expected, "exported": exported,
                "master_types": sorted({type(t).__name__ for t in master.values()})}, out)
    leave(worker)


def test_fp8_weight_sync_and_export_carry_the_plain_master_weights(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "sync.pt"
    mp.spawn(_sync, args=(1, f"file://{tmp_path}/pg", str(tiny_dir), str(out)), nprocs=1)
    r = torch.load(out)
    assert r["wrapped"] == "WeightWithDynamicFloat8CastTensor"  # the subclass really is there
    assert r["master_types"] == ["Tensor"]
    synced, expected = r["synced"], r["expected"]
    assert synced.keys() == expected.keys() and "model.layers.0.attention.query_key_value.weight" in synced
    for name, value in expected.items():
        assert synced[name].dtype == value.dtype and torch.equal(synced[name], value), name
    # The export: fp32 master weights under the same names (plus the MTP layers the engines skip).
    assert set(synced) <= set(r["exported"])
    for name, value in synced.items():
        assert r["exported"][name].dtype == torch.float32
        assert torch.equal(r["exported"][name].to(value.dtype), value), name
