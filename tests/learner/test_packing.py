"""Packed micro-batches (`learner.packing`, issue 25 part 1): the rows laid end to end, positions
restarting per row, attention within each row. For every consumer of positions the packed path
trains as the padded one: the same metrics and the same gradients, fp32, within 1e-6 relative.

One learner rank (gloo, this process) per path and consumer, on the tiny model (with its MTP
layer); the batch has a multi-turn row whose response mask has a gap (tool tokens, not trained)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ling_rl.config import parse_recipe
from ling_rl.driver.session import learner_sections
from ling_rl.learner.packing import Pack
from ling_rl.learner.worker import LearnerWorker, _lengths
from ling_rl.types import TrainBatch
from tests.learner.helpers import random_batch


class RecordingWorker(LearnerWorker):
    """A learner rank that keeps each update's gradients (the whole tensors) before the optimizer step."""

    def _optimizer_step(self, optimizer: torch.optim.Optimizer) -> float:
        self.grads = getattr(self, "grads", [])
        self.grads.append({n: p.grad.full_tensor().clone() for n, p in self.model.named_parameters()
                           if p.grad is not None})
        return super()._optimizer_step(optimizer)


def _batch(seed: int = 0) -> TrainBatch:
    """`random_batch` with a multi-turn row: response, 3 tool-result tokens (not trained), response."""
    batch = random_batch(1024, rows=6, prompt_len=5, max_resp=12, seed=seed)
    row = int(_lengths(batch).argmax())
    batch.response_mask[row, 8:11] = False
    batch.advantages[row, 8:11] = 0.0
    batch.inf_logprobs[row, 8:11] = 0.0
    batch.unit_ids = batch.unit_ids * batch.response_mask
    return batch


# consumer -> (recipe sections, learner keys)
CONSUMERS: dict[str, tuple[dict, dict]] = {
    "logprobs_sampling_lpo_units": ({"rollout": {"temperature": 0.8, "top_p": 0.9, "top_k": 20}}, {}),
    "gspo_sequences": ({"algorithm": {"loss": {"type": "gspo"}, "mismatch": {"type": "none"}}}, {}),
    "mtp": ({"model": {"tiny": "tiny", "mtp": {"enabled": True}}}, {}),
    "kl_reference": ({"algorithm": {"mismatch": {"type": "none"}, "kl": {"coef": 0.05}}}, {}),
    # lr 1e-30 leaves the fp32 weights bit-identical after the first update, so the second one
    # compares packing alone (AdamW's first step, ~lr * sign(g), would amplify last-bit differences).
    "r2_old_policy_routes": ({"rollout": {"routing_replay": "r2"}}, {"updates_per_batch": 2, "lr": 1e-30}),
    "r3_engine_routes": ({"rollout": {"routing_replay": "r3"}}, {}),
    "activation_checkpointing": ({}, {"activation_checkpointing": True}),
    "expert_bias_loads": ({}, {"freeze_expert_bias": False}),
    "fp8_multiple_of_16": ({}, {}),
    "dft": ({}, {}),
}


def _sections(consumer: str, packing: bool):
    sections, learner = CONSUMERS[consumer]
    return learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "algorithm": {"mismatch": {"type": "none"}},
        **sections,
        "learner": {"precision": "fp32", "lr": 1e-3, "micro_batch_tokens": 40, "packing": packing, **learner},
    }))


def _routes(worker: LearnerWorker, batch: TrainBatch) -> list[torch.Tensor]:
    """Engine-like routes for r3: the model's own, shifted at every 3rd token, none (-1) at each
    row's last token and on the padding."""
    b, t = batch.input_ids.shape
    with torch.no_grad():
        recorded = worker.model(batch.input_ids, return_routed_experts=True).routed_experts
    routed = (torch.arange(t)[None, :] < _lengths(batch)[:, None] - 1).reshape(-1)
    out = []
    for r in recorded:
        r = r.clone()
        shift = routed & (torch.arange(b * t) % 3 == 0)
        r[shift] = (r[shift] + 1) % worker.config.num_experts
        r[~routed] = -1
        out.append(r)
    return out


def _run(consumer: str, packing: bool, model_dir: str, init: str) -> dict:
    worker = RecordingWorker(0, 1, _sections(consumer, packing), model_dir, threads=torch.get_num_threads())
    worker.setup(init)
    if consumer == "fp8_multiple_of_16":
        # What float8 on CUDA sets (`setup`): micro-batches padded to 16 positions, the pack as a whole when packed.
        worker.token_multiple = 16
    if worker.ref_model is not None:  # a reference unlike the policy: a non-zero KL and KL gradient
        with torch.no_grad():
            for p in worker.ref_model.parameters():
                p.mul_(1.05)
    batch = _batch()
    if consumer == "r3_engine_routes":
        batch.routed_experts = _routes(worker, batch)
    shapes: list[tuple[int, ...]] = []  # every policy forward's input: [1, N] when packed
    worker.model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    if consumer == "dft":
        metrics = worker.sft_step(batch, lr=1e-3)
    else:
        metrics = worker.train_step(batch)
    bias = [g.expert_bias.clone() for g in worker.gates]
    return {"metrics": metrics, "grads": worker.grads, "bias": bias, "shapes": shapes,
            "multiple": worker.token_multiple}


@pytest.fixture(scope="module")
def runs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[bool, dict]]:
    tmp = tmp_path_factory.mktemp("packing")
    threads = torch.get_num_threads()
    init = f"file://{tmp}/pg"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        return {c: {p: _run(c, p, str(tiny_dir), init) for p in (False, True)} for c in CONSUMERS}
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)


def _close(a: float | torch.Tensor, b: float | torch.Tensor, what: str, scale: float = 0.0) -> None:
    """|a - b| <= 1e-6 * max(|a|), or of `scale` when larger (a gradient tensor is judged against the
    update's largest gradient entry: fp32 sums of ~1e-2 terms leave ~1e-9 on a 1e-3 entry)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = max(float(a.abs().max()) if a.numel() else 0.0, scale, 1e-6)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= 1e-6 * scale, f"{what}: packed differs from padded by {err:.3g} (scale {scale:.3g})"


# Per-unit averages, combined over micro-batches weighted by tokens: they depend on how the rows
# were split into micro-batches (packed micro-batches hold other rows than padded ones at the same
# budget), as they depend on the number of ranks. Not values of the update.
PLAN_DEPENDENT = {"policy/mean_unit_len", "policy/units_per_response"}


@pytest.mark.parametrize("consumer", list(CONSUMERS))
def test_packed_trains_as_padded(runs: dict, consumer: str) -> None:
    padded, packed = runs[consumer][False], runs[consumer][True]
    # The two paths really differ: packed forwards are one row of real tokens (padded to the multiple).
    assert packed["shapes"] and all(s[0] == 1 and s[1] % packed["multiple"] == 0 for s in packed["shapes"])
    assert any(s[0] > 1 for s in padded["shapes"])
    assert sum(s[1] for s in packed["shapes"]) < sum(s[0] * s[1] for s in padded["shapes"])
    assert padded["metrics"].keys() == packed["metrics"].keys()
    for key, value in padded["metrics"].items():
        if key not in PLAN_DEPENDENT:
                _close(value, packed["metrics"][key], f"{consumer}: metric {key}")
    assert len(padded["grads"]) == len(packed["grads"]) >= 1
    for update, (ga, gb) in enumerate(zip(padded["grads"], packed["grads"], strict=True)):
        assert ga.keys() == gb.keys()
        largest = max(float(g.abs().max()) for g in ga.values())
        for name in ga:
            _close(ga[name], gb[name], f"{consumer}: update {update} gradient of {name}", scale=largest)
    for a, b in zip(padded["bias"], packed["bias"], strict=True):
        assert torch.equal(a, b), f"{consumer}: expert bias"


def test_the_consumers_really_differ(runs: dict) -> None:
    """The consumers exercise different paths (a test that cannot fail would pass here too)."""
    losses = {c: round(r[False]["metrics"].get("loss", r[False]["metrics"].get("dft/loss")), 6) for c, r in runs.items()}
    assert runs["mtp"][True]["metrics"]["mtp_loss"] > 0
    assert runs["kl_reference"][True]["metrics"]["kl"] != 0
    assert len(runs["r2_old_policy_routes"][True]["grads"]) == 2
    assert not all(torch.equal(a, b) for a, b in zip(runs["expert_bias_loads"][True]["bias"],
                                                     runs["logprobs_sampling_lpo_units"][True]["bias"]))
    assert len(set(losses.values())) >= 4, losses


def test_pack_layout_and_round_trip() -> None:
    lengths = torch.tensor([3, 5, 1])
    pack = Pack.of(lengths, length=6, multiple=4)
    assert pack.seq_lens == [3, 5, 1, 3] and pack.tokens == 12
    assert pack.positions.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 0, 1, 2]]
    x = torch.arange(18).view(3, 6)
    packed = pack.pack(x, fill=-1)
    assert packed.tolist() == [[0, 1, 2, 6, 7, 8, 9, 10, 12, -1, -1, -1]]
    back = pack.unpack(packed, fill=-7)
    valid = torch.arange(6)[None, :] < lengths[:, None]
    assert torch.equal(back[valid], x[valid]) and bool((back[~valid] == -7).all())
    with pytest.raises(ValueError, match="row lengths must be in 1..6"):
        Pack.of(torch.tensor([0, 3]), length=6)

