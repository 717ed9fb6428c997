"""FSDP2 learner ranks (real torch.distributed, gloo, spawned processes)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ling_rl.config import parse_recipe
from ling_rl.driver.session import learner_sections
from ling_rl.learner.sections import LearnerSections
from tests.learner.helpers import leave, random_batch


def _recipe(world: int, sections: dict | None = None, **learner: object) -> LearnerSections:
    """A recipe for `world` ranks; `sections` overrides whole sections other than `learner`."""
    return learner_sections(parse_recipe({
        "model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "learner": {"precision": "fp32", "lr": 1e-3, "micro_batch_tokens": 40, "num_ranks": world, **learner},
        "rollout": {"routing_replay": "r2"} if learner.get("updates_per_batch", 1) > 1 else {},
        "algorithm": {"mismatch": {"type": "none"}},
        **(sections or {}),
    }))


def _train(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str | None) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init)
    metrics = [worker.train_step(random_batch(1024, seed=s)) for s in range(2)]
    if ckpt:
        worker.save_checkpoint(ckpt)
        metrics += [worker.train_step(random_batch(1024, seed=s)) for s in (2, 3)]
    if rank == 0:
        torch.save(metrics, out)
    leave(worker)


def _resume(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init)
    worker.load_checkpoint(ckpt)
    metrics = [worker.train_step(random_batch(1024, seed=s)) for s in (2, 3)]
    if rank == 0:
        torch.save(metrics, out)
    leave(worker)


def _spawn(fn, world: int, tmp: Path, tag: str, model_dir: Path, learner: dict, ckpt: str | None = None) -> list[dict]:
    out = tmp / f"{tag}.pt"
    mp.spawn(fn, args=(world, f"file://{tmp}/pg-{tag}", str(model_dir), str(out), learner, ckpt), nprocs=world)
    return torch.load(out)


def test_two_ranks_equal_one_rank(tmp_path: Path, tiny_dir: Path) -> None:
    one = _spawn(_train, 1, tmp_path, "one", tiny_dir, {})
    two = _spawn(_train, 2, tmp_path, "two", tiny_dir, {})
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert one[0]["loss"] != pytest.approx(one[1]["loss"])  # different batches really train differently


def test_checkpoint_resume_continues_identically(tmp_path: Path, tiny_dir: Path) -> None:
    """Save after 2 steps and train 2 more; a fresh group that loads the checkpoint must reproduce
    the last 2 steps exactly (model, AdamW moments and schedule restored)."""
    learner = {"schedule": "cosine", "warmup_steps": 1}
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    straight = _spawn(_train, 2, tmp_path, "straight", tiny_dir, learner, str(ckpt))
    resumed = _spawn(_resume, 2, tmp_path, "resumed", tiny_dir, learner, str(ckpt))
    for a, b in zip(straight[2:], resumed):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-7)
        assert a["lr"] == pytest.approx(b["lr"])


def test_several_updates_per_batch_use_old_policy_and_routing_replay(tmp_path: Path, tiny_dir: Path) -> None:
    metrics = _spawn(_train, 1, tmp_path, "ppo", tiny_dir, {"updates_per_batch": 2})
    # With old log-probs from before the first update, the second update sees ratios != 1.
    assert metrics[0]["policy/ratio_max"] > 1.0 or metrics[0]["policy/ratio_min"] < 1.0


# --- learning-rate schedule: one step per RL step -------------------------------------------------

def test_lr_schedule_advances_per_rl_step_and_resumes(tmp_path: Path, tiny_dir: Path) -> None:
    """With 2 updates per batch, warm-up and cosine count RL steps (not optimizer updates); the
    logged LR is the one the step used; a resumed worker continues the schedule exactly."""
    learner = {"updates_per_batch": 2, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1,
               "sections": {"run": {"steps": 6}}}
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    straight = _spawn(_train, 1, tmp_path, "straight", tiny_dir, learner, str(ckpt))
    resumed = _spawn(_resume, 1, tmp_path, "resumed", tiny_dir, learner, str(ckpt))
    # RL step k uses factor(k): warm-up (k+1)/2 for k < 2, then cosine over the 4 remaining steps.
    expected = [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))]
    assert [m["lr"] for m in straight] == pytest.approx([1e-3 * f for f in expected])
    for a, b in zip(straight[2:], resumed):
        assert a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-7)


# --- a batch with no signal does not move the weights -------------------------------------------

def _skip(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str | None) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init)
    before = {k: v.clone() for k, v in worker._full_state().items()}
    flat = random_batch(1024, seed=0)
    flat.advantages.zero_()
    skipped = worker.train_step(flat)
    after_skip = worker._full_state()
    result = {
        "skipped": skipped,
        "unchanged": all(torch.equal(before[k], after_skip[k]) for k in before),
        "optimizer_state": len(worker.optimizer.state),
        "schedule_position": worker.scheduler.last_epoch,
    }
    result["trained"] = worker.train_step(random_batch(1024, seed=1))
    after_train = worker._full_state()
    result["changed"] = any(not torch.equal(before[k], after_train[k]) for k in before)
    if rank == 0:
        torch.save(result, out)
    leave(worker)


def test_batch_without_signal_skips_the_update(tmp_path: Path, tiny_dir: Path) -> None:
    """All advantages zero and no KL term: no optimizer step, no schedule step, `skipped` = 1."""
    result = _spawn(_skip, 1, tmp_path, "skip", tiny_dir,
                    {"updates_per_batch": 2, "warmup_steps": 2, "weight_decay": 0.1})
    assert result["skipped"]["skipped"] == 1.0
    assert result["skipped"]["lr"] == pytest.approx(0.5e-3)  # the LR the next real step will use
    assert result["unchanged"] and result["optimizer_state"] == 0 and result["schedule_position"] == 0
    assert result["trained"]["skipped"] == 0.0 and result["trained"]["lr"] == pytest.approx(0.5e-3)
    assert result["changed"]


def test_signal_rule() -> None:
    from ling_rl.algorithms.config import AlgorithmConfig
    from ling_rl.learner.worker import carries_signal

    batch = random_batch(1024, seed=0)
    plain = AlgorithmConfig()
    with_kl = AlgorithmConfig.model_validate({"kl": {"coef": 0.1}})
    assert carries_signal(batch, plain)
    flat = random_batch(1024, seed=0)
    flat.advantages.zero_()
    assert not carries_signal(flat, plain)
    assert carries_signal(flat, with_kl)  # the KL term still has a gradient
    # Advantages off the response mask do not count; no response token at all carries nothing.
    outside = random_batch(1024, seed=0)
    outside.advantages = (~outside.response_mask).float()
    assert not carries_signal(outside, plain)
    empty = random_batch(1024, seed=0)
    empty.response_mask.zero_()
    assert not carries_signal(empty, with_kl)


# --- routing replay R2: every update routes like the old-policy pass ----------------------------

def _routing(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str | None) -> None:
    """Record, through forward hooks, the input rows and the experts of every forward of the
    policy model: the old-policy pass (no grad) and each update's forward (grad)."""
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init)
    forwards: list[dict] = []

    def on_model(module, args, kwargs):
        forwards.append({"ids": (args[0] if args else kwargs["input_ids"]).clone(), "grad": torch.is_grad_enabled(),
                         "seq_lens": kwargs.get("seq_lens"), "experts": []})

    def on_moe(module, args, output):
        forwards[-1]["experts"].append(output[1].clone())

    worker.model.register_forward_pre_hook(on_model, with_kwargs=True)
    for layer in worker.model.trunk_layers:
        if layer.is_moe:
            layer.mlp.register_forward_hook(on_moe)
    for s in range(2):
        worker.train_step(random_batch(1024, seed=s))
    if rank == 0:
        torch.save(forwards, out)
    leave(worker)


def _routing_by_row(forward: dict) -> dict[tuple, list[torch.Tensor]]:
    """Token row (without right padding) -> per MoE layer, the experts of its tokens [L, k]. A
    packed forward ([1, N] with `seq_lens`) is cut at its rows' ends, a padded one [B, T] at each
    row's padding (random_batch tokens are >= 10, padding 0)."""
    ids = forward["ids"]
    if forward["seq_lens"] is not None:
        assert ids.shape[0] == 1 and sum(forward["seq_lens"]) == ids.shape[1]
        experts = [e.view(ids.shape[1], -1).split(forward["seq_lens"]) for e in forward["experts"]]
        return {tuple(row.tolist()): [e[r] for e in experts] for r, row in enumerate(ids[0].split(forward["seq_lens"]))}
    b, t = ids.shape
    rows = {}
    for r in range(b):
        length = int((ids[r] != 0).sum())
        rows[tuple(ids[r, :length].tolist())] = [e.view(b, t, -1)[r, :length] for e in forward["experts"]]
    return rows


@pytest.mark.parametrize(("replay", "packing"), [("r2", True), ("none", True), ("r2", False)])
def test_routing_replay_r2_reuses_old_policy_experts(tmp_path: Path, tiny_dir: Path, replay: str,
                                                     packing: bool) -> None:
    """With `r2`, every update's forward routes each token of each row to the experts of the
    old-policy pass, packed (the default) or padded; with replay off, the weights moved by the
    first update change some routing in the second (which is what shows the comparison can fail)."""
    forwards = _spawn(_routing, 1, tmp_path, f"routing-{replay}-{packing}", tiny_dir,
                      {"updates_per_batch": 2, "lr": 1e-2, "packing": packing,
                       "sections": {"rollout": {"routing_replay": replay}}})
    assert all((f["seq_lens"] is not None) == packing for f in forwards)  # the layout under test ran
    steps, current = [], None
    for f in forwards:  # each step: its old-policy pass (no grad) then its updates (grad)
        if not f["grad"] and (current is None or current["updates"]):
            current = {"old": {}, "updates": []}
            steps.append(current)
        if f["grad"]:
            current["updates"].append(f)
        else:
            current["old"].update(_routing_by_row(f))
    assert len(steps) == 2 and all(len(s["updates"]) >= 2 for s in steps)
    compared = differing = 0
    for s in steps:
        for f in s["updates"]:
            for row, experts in _routing_by_row(f).items():
                for used, old in zip(experts, s["old"][row], strict=True):
                    compared += used.numel()
                    differing += int((used.sort(-1).values != old.sort(-1).values).sum())
    assert compared > 0
    if replay == "r2":
        assert differing == 0
    else:
        assert differing > 0


# --- expert bias: frozen by default, aux-loss-free balancing update when not --------------------

def _bias(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str | None) -> None:
    from safetensors.torch import load_file

    from ling_rl.learner.worker import LearnerWorker, _lengths

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init)
    gates = [layer.mlp.gate for layer in worker.model.trunk_layers if layer.is_moe]
    batch = random_batch(1024, seed=0)
    before = [g.expert_bias.clone() for g in gates]
    with torch.no_grad():  # the routing of the update's forward: same weights, whole batch at once
        routed = worker.model(batch.input_ids, return_routed_experts=True).routed_experts
    b, t = batch.input_ids.shape
    valid = torch.arange(t)[None, :] < _lengths(batch)[:, None]
    loads = [torch.bincount(r.view(b, t, -1)[valid].reshape(-1), minlength=len(before[0])) for r in routed]
    worker.train_step(batch)
    after = [g.expert_bias.clone() for g in gates]
    # The weights the engines load: the sync's buckets (rank 0 writes them; the barrier in
    # save_checkpoint orders the reads below after the writes).
    worker.write_weight_buckets(os.path.join(ckpt, "sync"), "float32", 1 << 30)
    worker.save_checkpoint(ckpt)
    fresh = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    fresh.setup(init)
    fresh.load_checkpoint(ckpt)
    restored = [layer.mlp.gate.expert_bias.clone() for layer in fresh.model.trunk_layers if layer.is_moe]
    weights = {k: v for path in sorted(Path(ckpt).glob("sync.*.safetensors")) for k, v in load_file(path).items()}
    names = [f"model.layers.{i}.mlp.gate.expert_bias" for i, layer in enumerate(worker.model.trunk_layers) if layer.is_moe]
    synced = [weights[name] for name in names]
    torch.save({"before": before, "after": after, "loads": loads, "restored": restored, "synced": synced},
               f"{out}.rank{rank}")
    leave(worker)


@pytest.mark.parametrize("freeze", [True, False])
def test_expert_bias_update(tmp_path: Path, tiny_dir: Path, freeze: bool) -> None:
    """`freeze_expert_bias: false`: after an update, bias_e += rate * sign(mean load - load_e)
    from the tokens routed in it (summed over ranks), the same on every rank, in the checkpoint
    and in the weights the engines load. `true` (default): bit-identical."""
    rate = 0.01
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    out = tmp_path / "bias.pt"
    learner = {"freeze_expert_bias": freeze, "expert_bias_update_rate": rate}
    mp.spawn(_bias, args=(2, f"file://{tmp_path}/pg-bias", str(tiny_dir), str(out), learner, str(ckpt)), nprocs=2)
    ranks = [torch.load(f"{out}.rank{r}") for r in range(2)]
    zero, one = ranks
    assert len(zero["before"]) >= 1
    for i, (before, after, load) in enumerate(zip(zero["before"], zero["after"], zero["loads"])):
        assert torch.equal(after, one["after"][i]) and torch.equal(after, zero["restored"][i])
        assert torch.equal(after, one["restored"][i])
        if freeze:
            assert torch.equal(after, before)
        else:
            loads = load.float()
            expected = before + rate * torch.sign(loads.mean() - loads)
            torch.testing.assert_close(after, expected, rtol=0, atol=1e-7)
            assert not torch.equal(after, before)
        assert torch.equal(zero["synced"][i], after)


# --- ranks agree on metric keys; r2 with one update runs no extra pass ---------------------------

def _few_rows(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str | None) -> None:
    """Two rows, two updates, two ranks: each mini-batch has one row, so rank 1 has none in either."""
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init, collective_timeout_s=60.0)  # a mismatch fails within a minute, not the 300 s default
    metrics = worker.train_step(random_batch(1024, rows=2, seed=3))
    torch.save(metrics, f"{out}.rank{rank}")
    leave(worker)


def _spawn_bounded(fn, world: int, tmp: Path, tag: str, model_dir: Path, learner: dict, timeout_s: float) -> list[dict]:
    """`fn` on `world` ranks; fails (and ends the ranks) when they are not done within `timeout_s`."""
    out = tmp / f"{tag}.pt"
    ctx = mp.start_processes(fn, args=(world, f"file://{tmp}/pg-{tag}", str(model_dir), str(out), learner, None),
                             nprocs=world, join=False, start_method="spawn")
    try:
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"learner ranks still running after {timeout_s} s (a hung collective)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(f"{out}.rank{r}") for r in range(world)]


def test_a_rank_without_rows_in_a_mini_batch_reduces_the_same_metric_keys(tmp_path: Path, tiny_dir: Path) -> None:
    """Fewer rows per update than ranks: the rank without rows still records `sync/gap_mean` and
    `sync/gap_max` (before the fix it sent a shorter metric tensor: gloo failed or hung)."""
    zero, one = _spawn_bounded(_few_rows, 2, tmp_path, "few", tiny_dir, {"updates_per_batch": 2}, timeout_s=240)
    assert zero.keys() == one.keys()
    assert zero == one  # reduced values: the same on every rank
    assert 0.0 < zero["sync/gap_max"] < math.inf and 0.0 < zero["sync/gap_mean"] <= zero["sync/gap_max"]


def _count_forwards(rank: int, world: int, init: str, model_dir: str, out: str, learner: dict, ckpt: str | None) -> None:
    from ling_rl.learner.worker import LearnerWorker

    worker = LearnerWorker(rank, world, _recipe(world, **learner), model_dir)
    worker.setup(init)
    forwards = {"no_grad": 0, "grad": 0}

    def count(module, args, kwargs):
        forwards["grad" if torch.is_grad_enabled() else "no_grad"] += 1

    worker.model.register_forward_pre_hook(count, with_kwargs=True)
    metrics = worker.train_step(random_batch(1024, seed=0))
    torch.save({"forwards": forwards, "metrics": metrics}, out)
    leave(worker)


def test_r2_with_one_update_per_batch_runs_no_old_policy_pass(tmp_path: Path, tiny_dir: Path) -> None:
    """One update: its own forward routes as the old-policy pass would, so that pass is skipped."""
    result = _spawn(_count_forwards, 1, tmp_path, "r2-one", tiny_dir,
                    {"updates_per_batch": 1, "sections": {"rollout": {"routing_replay": "r2"}}})
    assert result["forwards"]["no_grad"] == 0
    assert result["forwards"]["grad"] >= 1 and result["metrics"]["skipped"] == 0.0
