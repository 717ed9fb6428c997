"""Asynchronous RL (`rollout.max_staleness`, docs/async.md).

Unit tests of the in-flight buffer (admission, partial rollouts, the staleness bound, its
checkpoint state) in pure Python; then real runs of the tiny recipe (Ray, a vLLM engine, FSDP2
ranks, reward workers): k = 0 is the synchronous loop, k = 1 and k = 2 (partial rollouts) never
train a token more than k versions old (read back from every token's logged version), reward
rises with k = 1, and a run SIGKILLed with rollouts in flight resumes without losing or repeating
a sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ling_rl.rollout.config import RolloutConfig
from ling_rl.rollout.engine import Generation, check_seed_ranges
from ling_rl.rollout.inflight import InflightBuffer, InflightError
from ling_rl.rollout.requests import request_seed
from ling_rl.types import Sample, ScoredRollout
from tests.processes import wait_for_path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"
CFG = RolloutConfig(group_size=2, prompts_per_step=2, max_staleness=2, token_budget=3, max_response_tokens=6)


def _seed(call: int, index: int) -> int:
    return request_seed(CFG, call, index)


def _sample(i: int) -> Sample:
    return Sample(id=f"row-{i}", prompt=f"p{i}", prompt_ids=[100 + i, 7], columns={"answer": str(i)})


def _gen(ids: list[int], reason: str) -> Generation:
    return Generation(token_ids=ids, logprobs=[-0.5] * len(ids), text="", finish_reason=reason)


def _buffer(k: int = 2, max_interruptions: int | None = None) -> InflightBuffer:
    return InflightBuffer(group_size=2, prompts_per_step=2, max_staleness=k, max_interruptions=max_interruptions)


def test_partial_responses_continue_with_their_tokens_and_versions() -> None:
    buf = _buffer()
    buf.admit([_sample(0)], version=5, max_tokens=6)
    first = buf.plan_call(3, _seed)
    assert [(r.prompt_ids, r.n, r.max_tokens) for r in first.requests] == [([100, 7], 2, 3)]
    # Response 0 is cut by the budget (3 of 6 tokens), response 1 stops on EOS.
    buf.absorb(first, [[_gen([1, 2, 3], "length"), _gen([9], "stop")]], version=5)
    assert buf.pop_completed(lambda ids: ["x"] * len(ids)) == []
    second = buf.plan_call(3, _seed)
    # Only the partial response continues: its prompt is the prompt plus its tokens so far.
    assert [(r.prompt_ids, r.n, r.max_tokens) for r in second.requests] == [([100, 7, 1, 2, 3], 1, 3)]
    check_seed_ranges(first.requests + second.requests)  # no seed stream is reused across calls
    buf.absorb(second, [[_gen([4, 5, 6], "length")]], version=6)
    rollouts = buf.pop_completed(lambda ids: [str(i) for i in ids])
    by_len = sorted(rollouts, key=lambda r: len(r.response_ids))
    assert by_len[0].response_ids == [9] and by_len[0].token_versions == [5] and by_len[0].finish_reason == "stop"
    long = by_len[1]
    assert long.response_ids == [1, 2, 3, 4, 5, 6]  # the tokens before the interruption are kept
    assert long.token_versions == [5, 5, 5, 6, 6, 6] and long.policy_version == 5
    assert long.finish_reason == "length" and long.inf_logprobs == [-0.5] * 6
    counters = buf.take_counters()
    assert counters.interruptions == 1 and counters.admitted_groups == 1 and buf.open == {}


def test_too_many_interruptions_drop_the_group() -> None:
    buf = _buffer(max_interruptions=0)
    buf.admit([_sample(0)], version=0, max_tokens=6)
    plan = buf.plan_call(3, _seed)
    buf.absorb(plan, [[_gen([1, 2, 3], "length"), _gen([4], "stop")]], version=0)
    assert buf.open == {} and buf.take_counters().dropped_responses == 2
    # A later output for the dropped group is discarded, not an error.
    buf.absorb(plan, [[_gen([1, 2, 3], "length"), _gen([4], "stop")]], version=0)


def test_admission_stops_at_k_plus_one_batches() -> None:
    buf = _buffer(k=1)
    assert buf.capacity == 4 and buf.free_slots() == 4
    buf.admit([_sample(i) for i in range(3)], version=0, max_tokens=6)
    assert buf.free_slots() == 1
    with pytest.raises(InflightError, match="free slots"):
        buf.admit([_sample(3), _sample(4)], version=0, max_tokens=6)
    plan = buf.plan_call(None, _seed)
    buf.absorb(plan, [[_gen([1], "stop"), _gen([2], "stop")] for _ in plan.requests], version=0)
    assert len(buf.pop_completed(lambda ids: [""] * len(ids))) == 3 * 2
    buf.add_ready(0, 0, [])
    assert buf.free_slots() == 3  # ready groups hold a slot until trained


def _ready(buf: InflightBuffer, serial: int, version: int, versions: list[int]) -> None:
    from ling_rl.types import Rollout

    rollout = Rollout(sample=_sample(serial), group=serial, response_ids=[1] * len(versions), response_text="",
                      inf_logprobs=[0.0] * len(versions), finish_reason="stop", policy_version=version,
                      token_versions=versions)
    buf.add_ready(serial, version, [ScoredRollout(rollout=rollout, reward=1.0, breakdown={"r": 1.0})])


def test_batches_take_the_oldest_groups_and_drop_the_ones_past_the_bound() -> None:
    buf = _buffer(k=2)
    _ready(buf, 0, 3, [3, 3])
    _ready(buf, 1, 5, [5])
    _ready(buf, 2, 4, [4, 5])
    buf.admit([_sample(9)], version=4, max_tokens=6)  # open, started at version 4
    batch = buf.take_batch(version=6, n=1)
    # Version 3 is 3 > k behind step 6: dropped; of the rest the oldest goes first. The open group
    # of version 4 could only be trained from step 7 on (lag 3): dropped as well.
    assert [g.serial for g in batch] == [2] and [g.serial for g in buf.ready] == [1]
    assert buf.open == {} and buf.take_counters().stale_dropped_responses == 2 * 2
    _ready(buf, 3, 6, [2, 6])  # a token older than the group's start: the driver's assertion
    with pytest.raises(InflightError, match="staleness 4 > rollout.max_staleness 2"):
        buf.take_batch(version=6, n=2)


def test_checkpoint_state_round_trips_through_json() -> None:
    buf = _buffer()
    buf.admit([_sample(0), _sample(1)], version=2, max_tokens=6)
    plan = buf.plan_call(3, _seed)
    buf.absorb(plan, [[_gen([1, 2, 3], "length"), _gen([4], "stop")]] * 2, version=2)
    _ready(buf, 7, 1, [1, 2])
    state = json.loads(json.dumps(buf.state_dict()))
    again = _buffer()
    again.load_state_dict(state)
    assert again.state_dict() == buf.state_dict()
    a, b = buf.plan_call(3, _seed), again.plan_call(3, _seed)
    assert [(r.prompt_ids, r.seed, r.max_tokens) for r in a.requests] == [(r.prompt_ids, r.seed, r.max_tokens)
                                                                        for r in b.requests]
    assert again.ready[0].scored[0].rollout.token_versions == [1, 2]


def test_train_batch_carries_each_tokens_version_lag() -> None:
    from ling_rl.algorithms import AlgorithmConfig
    from ling_rl.driver.batching import build_train_batch

    buf = _buffer()
    _ready(buf, 0, 3, [3, 3, 4])
    _ready(buf, 1, 4, [4, 5])
    scored = [x for g in buf.ready for x in g.scored]
    batch, _ = build_train_batch(scored, AlgorithmConfig(), None, pad_id=0, version=5)
    assert batch.version_lag.tolist() == [[0, 0, 2, 2, 1], [0, 0, 1, 0, 0]]  # prompts are 2 tokens
    assert batch.select(slice(1, 2)).version_lag.tolist() == [[0, 0, 1, 0, 0]]
    assert build_train_batch(scored, AlgorithmConfig(), None, pad_id=0)[0].version_lag is None  # synchronous


def test_async_keys_are_checked() -> None:
    with pytest.raises(ValidationError, match="max_staleness is 0"):
        RolloutConfig(token_budget=16)
    with pytest.raises(ValidationError, match="needs 4 generation calls"):
        RolloutConfig(max_staleness=2, token_budget=8, max_response_tokens=32)
    assert RolloutConfig(max_staleness=2, token_budget=16, max_response_tokens=32).token_budget == 16


def _calls(path: Path) -> list[str]:
    """The dotted name of every call in a module (`s.tracker.log`, `evaluate`, ...)."""
    import ast

    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                names.append(".".join([f.id, *reversed(parts)]))
    return names


def test_one_driver_loop_stops_evaluates_logs_and_saves_in_one_place() -> None:
    """Synchronous and k-stale RL share `ling_rl/driver/loop.py`'s loop: no other driver module
    handles stop requests, evaluates, logs a step or decides a checkpoint (ARCHITECTURE.md, "One
    driver"); what differs is the generation strategy."""
    driver = ROOT / "ling_rl" / "driver"
    skeleton = ("StopRequest.install", "evaluate", "s.tracker.log", "s.checkpointer.due", "monitor.observe")
    where = {name: [p.name for p in sorted(driver.glob("*.py")) for call in _calls(p) if call == name]
             for name in skeleton}
    assert where == {"StopRequest.install": ["loop.py"], "evaluate": ["loop.py", "loop.py"],
                     "s.tracker.log": ["loop.py"], "s.checkpointer.due": ["loop.py"],
                     "monitor.observe": ["loop.py"]}, where


def test_driver_generation_calls_are_judged_by_progress() -> None:
    """The k-stale strategy's calls go through `RolloutGroup.start_generate` / `finish_generate`
    (an engine fails only when it stops stepping, tests/rollout/test_deadlines.py), never through
    `submit("generate")` + `wait`, whose one deadline would fail a long call that still progresses."""
    import ast

    raw = []
    for path in sorted((ROOT / "ling_rl" / "driver").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "submit"
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "generate"):
                raw.append(f"{path.name}:{node.lineno}")
    assert not raw, raw
    assert {"s.rollout.start_generate", "self.s.rollout.finish_generate"} <= set(_calls(ROOT / "ling_rl" / "driver" / "kstale.py"))


def test_generation_strategies_implement_the_interface() -> None:
    """Each strategy has every method of `GenerationStrategy`, with its parameters."""
    import inspect

    from ling_rl.driver.generation import GenerationStrategy, SynchronousGeneration
    from ling_rl.driver.kstale import KStaleGeneration

    methods = [m for m in vars(GenerationStrategy) if not m.startswith("_") and callable(vars(GenerationStrategy)[m])]
    assert methods == ["next_batch", "train", "after_train", "step_metrics", "checkpoint_state"]
    for cls in (SynchronousGeneration, KStaleGeneration):
        for m in methods:
            want = inspect.signature(getattr(GenerationStrategy, m))
            assert list(inspect.signature(getattr(cls, m)).parameters) == list(want.parameters), (cls, m)


# --- real runs of the tiny recipe ----------------------------------------------------------------


def _overrides(run_dir: Path, steps: int, **extra: object) -> list[str]:
    items = {
        "run.steps": steps, "run.output_dir": str(run_dir.parent), "run.name": run_dir.name,
        "rewards": "[{name: numeric_response}]", "learner.lr": 2e-3, "learner.updates_per_batch": 2,
        "tracking.progress_bar": False, "checkpoint.every": 0, "checkpoint.export_hf": False, **extra,
    }
    return [f"{k}={v}" for k, v in items.items()]


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ling_rl.commands.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _run(run_dir: Path, steps: int, **extra: object) -> list[dict]:
    proc = _cli(["train", str(RECIPE), *_overrides(run_dir, steps, **extra)])
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-4000:]
    return _metrics(run_dir)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _trained(run_dir: Path) -> list[tuple[int, list]]:
    """(step, [(group serial, prompt id, token versions)]) of every train step in async.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "async.jsonl").read_text().splitlines()]
    return [(r["step"], [(g["serial"], g["sample"], g["versions"]) for g in r["groups"]]) for r in rows]


_VOLATILE = ("time/", "startup/", "sync/gather_s", "sync/transfer_s", "sync/load_s", "reward/elapsed_s",
             "reward/samples_per_s", "_latency_", "latency_mean_s", "latency_max_s")


def _assert_bound(run_dir: Path, rows: list[dict], k: int, steps: int) -> list[int]:
    trained = _trained(run_dir)
    assert [s for s, _ in trained] == list(range(steps))
    lags = []
    serials = []
    for step, groups in trained:
        for serial, _, versions in groups:
            serials.append(serial)
            lags += [step - v for response in versions for v, n in response for _ in range(n)]
    assert lags and 0 <= min(lags) and max(lags) <= k, (min(lags), max(lags))
    assert len(serials) == len(set(serials)), "a group was trained twice"
    assert max(r["async/staleness_max"] for r in rows) == max(lags)
    return lags


@pytest.mark.vllm
def test_k1_bounds_staleness_and_reward_rises(tmp_path: Path) -> None:
    """20 steps with max_staleness 1: no trained token is older than one version (most are exactly
    one: generation overlaps training), and the reward rises as in the synchronous e2e test."""
    run_dir = tmp_path / "k1"
    steps = 20
    rows = _run(run_dir, steps, **{"rollout.max_staleness": 1})
    lags = _assert_bound(run_dir, rows, 1, steps)
    assert sum(lag == 1 for lag in lags) > 0.5 * len(lags)  # the pipeline overlapped
    rewards = [r["async/batch_reward_mean"] for r in rows]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"k=1: batch reward first5={first:.3f} last5={last:.3f}")
    assert last > first + 0.1, [round(x, 3) for x in rewards]
    assert all(r["time/learner"] > 0 and "async/engine_busy_s" in r for r in rows)


def _assert_partial_rollouts_continue(run_dir: Path, rows: list[dict], steps: int) -> None:
    """max_staleness 2 with a budget of 16 of the 32 response tokens per call: responses cut at 16
    tokens are continued under the next version (their first 16 tokens keep the version that
    sampled them) and no trained token lags more than 2 versions."""
    _assert_bound(run_dir, rows, 2, steps)
    spans = [response for _, groups in _trained(run_dir) for _, _, versions in groups for response in versions
             if len(response) > 1]
    assert spans, "no trained response spans two versions"
    # Continued, not restarted: the first run holds exactly the budget's 16 tokens of the older version.
    assert all(response[0][1] == 16 and response[1][0] > response[0][0] for response in spans), spans[:5]
    assert sum(r["async/interruptions"] for r in rows) > 0 and max(r["async/partial_frac"] for r in rows) > 0
    # The train/inference gap per version lag reaches the tracker (0 where no token has that lag).
    assert all(f"sync/gap_mean_lag{lag}" in r for r in rows for lag in range(3))
    assert any(r["sync/gap_mean_lag2"] > 0 for r in rows if r["async/lag2_frac"] > 0)


@pytest.mark.vllm
def test_dynamic_sampling_drops_flat_groups_as_they_complete(tmp_path: Path) -> None:
    """k = 1 with dynamic sampling on correctness (exact_answer): the untrained tiny model is almost
    never right, so nearly every group is flat and dropped when scored; a step left with no group
    falls back to a skipped batch (no update, the engines keep their weights under the new version)
    and the run goes on, pass rates updated from every scored group."""
    run_dir = tmp_path / "dyn"
    steps = 4
    rows = _run(run_dir, steps, **{"rollout.max_staleness": 1, "curriculum.dynamic_sampling": True,
                                   "rewards": "[{name: numeric_response}, {name: exact_answer}]",
                                   "rollout.prompts_per_step": 4, "rollout.group_size": 4})
    scored = [r for r in rows if "dynamic/generated_groups" in r]
    assert scored and sum(r["dynamic/flat_groups_dropped"] for r in scored) > 0
    assert all(r["dynamic/kept_groups"] + r["dynamic/flat_groups_dropped"] == r["dynamic/generated_groups"]
               for r in scored)
    fallback = [r for r in rows if r.get("dynamic/fallback") == 1.0]
    assert all(r["train/skipped"] == 1.0 for r in fallback)
    assert all("curriculum/tracked_prompts" in r for r in rows)
    lags = [step - v for step, groups in _trained(run_dir) for _, _, versions in groups
            for response in versions for v, n in response for _ in range(n)]
    assert all(0 <= lag <= 1 for lag in lags)


@pytest.mark.vllm
def test_k2_partial_rollouts_continue_and_sigkill_resumes_without_losing_or_repeating_samples(tmp_path: Path) -> None:
    """k = 2 with partial rollouts: the uninterrupted run continues cut responses within the bound
    (`_assert_partial_rollouts_continue`); then the same run with a checkpoint after step 4 (its
    buffer holds partial and waiting groups), SIGKILL, restart: the same groups are trained in the
    same steps as in the run never interrupted, none twice, with the same metrics. (One test, so
    the suite runs the k = 2 recipe once uninterrupted.)"""
    steps = 8
    extra = {"rollout.max_staleness": 2, "rollout.token_budget": 16, "checkpoint.every": 4}
    straight = tmp_path / "straight"
    _assert_partial_rollouts_continue(straight, _run(straight, steps, **extra), steps)
    killed = tmp_path / "killed"
    args = ["train", str(RECIPE), *_overrides(killed, steps, **extra)]
    proc = _cli(args, start_new_session=True)
    wait_for_path(killed / "checkpoints" / "step-000004", proc, timeout=900)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((killed / "checkpoints" / "step-000004" / "driver_state.json").read_text())["async"]
    assert state["open"] or state["ready"], "nothing was in flight at the checkpoint"
    proc = _cli(args)
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-4000:]
    a, b = _trained(straight), _trained(killed)
    assert [s for s, _ in b] == list(range(steps))
    assert a == b
    serials = [serial for _, groups in b for serial, _, _ in groups]
    assert len(serials) == len(set(serials))
    held = {g["serial"] for g in state["open"]} | {g["serial"] for g in state["ready"]}
    after = {serial for step, groups in b if step >= 4 for serial, _, _ in groups}
    assert held & after  # groups in flight at the kill were trained after the resume
    ma, mb = _metrics(straight), _metrics(killed)
    for ra, rb in zip(ma[4:], mb[4:]):
        for key in ("train/loss", "train/grad_norm", "async/batch_reward_mean", "rollout/response_len_mean"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
