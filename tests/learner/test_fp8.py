"""FP8 learner (torchao, emulated on CPU): the conversion really happens and training tracks fp32.

One spawned rank trains the tiny model for 50 steps on the same batches in fp32 and in fp8
(bf16 elsewhere, as in production), recording before each step the response-token NLL of the
batch under the current weights: a quantity that depends on the model (the on-policy policy-loss
value does not), so it shows whether the two runs follow the same trajectory. Four batches with
advantage +1 on every response token are cycled, so the policy gradient steadily lowers their NLL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.learner.sections import LearnerSections
from ling_rl.driver.session import learner_sections
from tests.learner.helpers import leave, random_batch

STEPS = 50
# Measured on the tiny model (NLL falls from ~6.97 to ~1.9 nats over the 50 steps): the largest
# |NLL_fp8 - NLL_fp32| was 0.035 nats. The bound leaves ~3x room for platform differences while
# catching a broken cast (wrong scale, transposed weight), which moves the NLL by whole nats.
TOLERANCE = 0.1


def _recipe(precision: str) -> LearnerSections:
    return learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": precision, "lr": 1e-3, "micro_batch_tokens": 200, "num_ranks": 1},
        "algorithm": {"mismatch": {"type": "none"}},
    }))


def _run(rank: int, init: str, model_dir: str, out: str) -> None:
    from torchao.float8.float8_linear import Float8Linear

    from ling_rl.learner.worker import LearnerWorker

    result: dict = {}
    for precision in ("fp32", "fp8"):
        worker = LearnerWorker(0, 1, _recipe(precision), model_dir, threads=2)
        worker.setup(init)
        nll = []
        for s in range(STEPS):
            batch = random_batch(1024, seed=s % 4)
            batch.advantages = batch.response_mask.float()
            logp, _ = worker.old_logprobs(batch, record_routing=False)
            nll.append(float(-(logp * batch.response_mask).sum() / batch.response_mask.sum()))
            worker.train_step(batch)
        modules = dict(worker.model.named_modules())
        result[precision] = {
            "nll": nll,
            "float8": sorted(n for n, m in modules.items() if isinstance(m, Float8Linear)),
            "converted": getattr(worker, "fp8_modules", []),
            "lm_head": type(modules["lm_head"]).__name__,
            # FSDP2 renames a sharded module's class FSDP<name>: the router is its own (fp32) unit.
            "router": type(modules["model.layers.1.mlp.gate"]).__name__.removeprefix("FSDP"),
            "embeddings": type(modules["model.word_embeddings"]).__name__,
        }
        # The export (weight sync, HF folder) must carry plain tensors, not float8 wrapper subclasses.
        state = worker._full_state()
        result[precision]["state_types"] = sorted({type(t).__name__ for t in state.values()})
        result[precision]["state_dtypes"] = sorted({str(t.dtype) for t in state.values()})
    torch.save(result, out)
    leave(worker)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> dict:
    tmp = tmp_path_factory.mktemp("fp8")
    out = tmp / "result.pt"
    mp.spawn(_run, args=(f"file://{tmp}/pg", str(tiny_dir), str(out)), nprocs=1)
    return torch.load(out)


def test_fp8_path_converts_attention_and_dense_linears_only(runs: dict) -> None:
    fp8 = runs["fp8"]
    assert fp8["float8"] == sorted(fp8["converted"])
    for name in ("model.layers.0.attention.query_key_value", "model.layers.0.attention.dense",
                 "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.down_proj",
                 "model.layers.1.attention.query_key_value", "model.layers.1.mlp.shared_experts.up_proj"):
        assert name in fp8["float8"], name
    assert (fp8["lm_head"], fp8["router"], fp8["embeddings"]) == ("Linear", "Router", "Embedding")
    assert not any("experts." in n and "shared" not in n for n in fp8["float8"])
    assert runs["fp32"]["float8"] == []
    assert fp8["state_types"] == ["Tensor"] and fp8["state_dtypes"] == ["torch.float32"]


def test_fp8_nll_tracks_fp32_over_50_steps(runs: dict) -> None:
    a, b = torch.tensor(runs["fp32"]["nll"]), torch.tensor(runs["fp8"]["nll"])
    assert len(a) == STEPS
    diff = (a - b).abs()
    print(f"NLL fp32 {a[0]:.3f} -> {a[-1]:.3f}, fp8 {b[0]:.3f} -> {b[-1]:.3f}, max |diff| {diff.max():.4f}")
    assert float(diff.max()) < TOLERANCE, diff.tolist()
    # Training really moved the model: otherwise agreement would be trivial.
    assert float(a[0] - a[-1]) > 10 * TOLERANCE and float(b[0] - b[-1]) > 10 * TOLERANCE


# --- routed experts (float8 grouped GEMM: CUDA only; here, the selection and the wiring) ----------


def test_routed_experts_key_is_strict() -> None:
    from pydantic import ValidationError

    from ling_rl.learner.config import FP8Config

    assert FP8Config().routed_experts == "auto"
    with pytest.raises(ValidationError, match="routed_experts"):
        FP8Config(routed_experts="always")


def test_routed_experts_fp8_is_selected_only_where_supported() -> None:
    from ling_rl.learner.config import FP8Config
    from ling_rl.learner.fp8 import routed_experts_fp8_unsupported, use_routed_experts_fp8

    cpu = torch.device("cpu")
    assert "CUDA" in routed_experts_fp8_unsupported(cpu)
    assert use_routed_experts_fp8(FP8Config(routed_experts="auto"), cpu) is False
    assert use_routed_experts_fp8(FP8Config(routed_experts=False), cpu) is False
    with pytest.raises(ValueError, match=r"learner\.fp8\.routed_experts: true.*CUDA"):
        use_routed_experts_fp8(FP8Config(routed_experts=True), cpu)


def test_apply_fp8_on_cpu_keeps_routed_experts_high_precision() -> None:
    from ling_rl.learner.config import FP8Config
    from ling_rl.learner.fp8 import apply_fp8
    from ling_rl.models.ling_moe import Experts, LingForCausalLM
    from ling_rl.models.tiny import PRESETS

    model = LingForCausalLM(PRESETS["tiny"])
    converted = apply_fp8(model, FP8Config(), torch.device("cpu"))
    experts = [m for m in model.modules() if isinstance(m, Experts)]
    assert experts and all(type(m.gate_proj.data) is torch.Tensor and m.group_align == 1 for m in experts)
    assert not any(n.endswith("mlp.experts") for n in converted)
    with pytest.raises(ValueError, match=r"learner\.fp8\.routed_experts"):
        apply_fp8(LingForCausalLM(PRESETS["tiny"]), FP8Config(routed_experts=True), torch.device("cpu"))


def test_convert_routed_experts_wraps_weights_pads_groups_and_exports_plain_tensors() -> None:
    """The conversion itself is device-agnostic: torchao's wrapper only changes `_grouped_mm`, so
    on CPU (per-expert loop kernel) the converted model computes what the original does, and its state
    dict holds plain tensors (weight sync, checkpoints)."""
    from ling_rl.learner.fp8 import FP8_GROUP_ALIGN, _plain_weights, convert_routed_experts
    from ling_rl.models.ling_moe import Experts, LingForCausalLM
    from ling_rl.models.tiny import PRESETS

    torch.manual_seed(0)
    model = LingForCausalLM(PRESETS["tiny"])
    model.init_weights()
    ids = torch.randint(0, PRESETS["tiny"].vocab_size, (2, 24))
    with torch.no_grad():
        before = model(ids).logits
    names = convert_routed_experts(model)
    model.register_state_dict_post_hook(_plain_weights)
    assert names == [n for n, m in model.named_modules() if isinstance(m, Experts)] and names
    for name in names:
        experts = model.get_submodule(name)
        assert experts.group_align == FP8_GROUP_ALIGN
        assert "moe_training" in type(experts.gate_proj.data).__module__
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    state = model.state_dict()
    assert {type(t) for t in state.values()} == {torch.Tensor}


@pytest.mark.parametrize("align", [1, 16])
def test_grouped_ffn_with_aligned_groups_equals_looped_reference(align: int) -> None:
    """`torch._grouped_mm` runs on CPU too, so the group padding the float8 GEMM needs is checked
    here (values and gradients), including empty groups and a group larger than `align`."""
    from ling_rl.models.ling_moe import grouped_ffn, looped_ffn

    torch.manual_seed(0)
    e, h, i = 8, 32, 48
    counts = torch.tensor([0, 5, 17, 1, 0, 33, 2, 6])
    xs = torch.randn(int(counts.sum()), h, requires_grad=True)
    w = [(0.2 * torch.randn(e, i, h)).requires_grad_() for _ in range(2)]
    down = (0.2 * torch.randn(e, h, i)).requires_grad_()
    got = grouped_ffn(xs, counts, w[0], w[1], down, align)
    want = looped_ffn(xs, counts, w[0], w[1], down)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), (xs, w[0], w[1], down))
    ref = torch.autograd.grad(want.square().sum(), (xs, w[0], w[1], down))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def _converted_experts_under_fsdp(rank: int, init: str, out: str) -> None:
    """What the learner does on CUDA, on CPU with gloo: convert on the meta device, shard, allocate,
    load a full state dict, take an AdamW step, export."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from ling_rl.learner.fp8 import _plain_weights, _unwrapped, convert_routed_experts
    from ling_rl.models.hf_io import init_computed_buffers
    from ling_rl.models.ling_moe import Experts, LingForCausalLM
    from ling_rl.models.tiny import PRESETS

    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    ref = LingForCausalLM(cfg)
    ref.init_weights()
    with torch.device("meta"):
        model = LingForCausalLM(cfg)
    convert_routed_experts(model)
    model.register_state_dict_post_hook(_plain_weights)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cpu")
    set_model_state_dict(model, ref.state_dict(), options=StateDictOptions(full_state_dict=True))
    # As the learner's loader does: RoPE frequencies are not in the state dict, and `to_empty` left
    # them uninitialized (NaN in some runs, a flaky failure of this test).
    init_computed_buffers(model, torch.device("cpu"))
    experts = next(m for m in model.modules() if isinstance(m, Experts))
    ref_experts = next(m for m in ref.modules() if isinstance(m, Experts))
    local = experts.gate_proj.to_local()
    weight = _unwrapped(local.detach()).clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, cfg.vocab_size, (2, 16))).logits.square().mean().backward()
    opt.step()
    torch.save({
        "wrapped": "moe_training" in type(local).__module__,
        "loaded": torch.equal(weight, ref_experts.gate_proj.detach()),
        "moved": float((_unwrapped(experts.gate_proj.detach().to_local()) - weight).abs().max()),
        "state_types": sorted({type(t.to_local() if isinstance(t, DTensor) else t).__name__
                               for t in model.state_dict().values()}),
    }, out)
    dist.destroy_process_group()


def test_converted_routed_experts_load_train_and_export_under_fsdp2(tmp_path: Path) -> None:
    mp.spawn(_converted_experts_under_fsdp, args=(f"file://{tmp_path}/pg", str(tmp_path / "out.pt")), nprocs=1)
    result = torch.load(tmp_path / "out.pt")
    assert result["wrapped"] and result["loaded"]
    assert result["moved"] > 0
    assert result["state_types"] == ["Tensor"]
