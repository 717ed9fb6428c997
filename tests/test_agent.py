"""Agentic RL end to end (`environment:`, docs/environments.md): real `ling-rl train` runs of the tiny
model with tool processes, vLLM, FSDP2 ranks and reward workers.

The untrained model writes random text, so the runs name a user parser by file path
(tests/environments/scripted.py) that plays a fixed script of calls whatever the model wrote: the
episodes go through every path of the loop (valid calls, a tool that raises, an unknown tool, a
malformed call, a tool that hangs, a tool whose process dies, answers). What the model learns from
tools is measured by recipes/agent.yaml (bench/RESULTS.md), not here.

- one synchronous run with R3: a TRL-contract environment class used unchanged (its `get_reward`
  a reward source), a TRL reward function reading the conversation, every failure counted and
  the run going on, routes replayed across turns;
- a run whose environment fails every episode stops after `environment.max_failed_steps`, one line;
- k = 1 asynchronous RL with multi-turn episodes, SIGKILLed after a checkpoint and resumed;
- a tool that does not import or has no schema: one line before anything starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.processes import wait_for_path

ROOT = Path(__file__).resolve().parents[1]
ENVS = "tests/environments"

BASE = {
    "model": {"tiny": "tiny", "dtype": "float32"},
    "data": {"train": "data/arith/train.jsonl", "chat_template": True},
    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_response_tokens": 64, "max_prompt_tokens": 384},
    "algorithm": {"loss": {"type": "lpo"}},
    "learner": {"num_ranks": 2, "lr": 1.0e-3, "precision": "fp32", "micro_batch_tokens": 4096},
    "cluster": {"num_cpus": 4, "rollout": {"num_cpus": 1, "threads": 2}, "learner": {"num_cpus": 1},
                "reward": {"num_cpus": 0.5}},
    "tracking": {"wandb": {"mode": "offline"}, "progress_bar": False},
    "checkpoint": {"every": 0, "export_hf": False},
}


def _recipe(tmp: Path, name: str, steps: int, environment: dict, rewards: list, **sections: dict) -> Path:
    recipe = {**BASE, "run": {"name": name, "steps": steps, "output_dir": str(tmp)}, "environment": environment,
              "rewards": rewards}
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ling_rl.commands.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _total(rows: list[dict], key: str) -> float:
    return sum(r.get(key, 0.0) for r in rows)


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], str]:
    tmp = tmp_path_factory.mktemp("agent")
    environment = {
        "factory": f"{ENVS}/trl_counter.py:CounterEnv",
        "tools": [f"{ENVS}/agent_tools.py:boom", f"{ENVS}/agent_tools.py:hang", f"{ENVS}/agent_tools.py:die"],
        "tool_parser": f"{ENVS}/scripted.py:script", "max_turns": 4, "max_turn_tokens": 8, "tool_timeout_s": 2,
        "max_failed_fraction": 0.9,
    }
    rewards = [{"name": f"{ENVS}/trl_counter.py:tool_messages", "weight": 0.1},
               {"name": f"{ENVS}/trl_counter.py:env_reward", "weight": 0.0}]
    recipe = _recipe(tmp, "scripted", 3, environment, rewards, rollout={"routing_replay": "r3"})
    proc = _cli(["train", str(recipe)])
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-4000:]
    return tmp / "scripted", _metrics(tmp / "scripted"), out


@pytest.mark.vllm
def test_every_tool_failure_is_contained_counted_and_the_run_goes_on(scripted_run) -> None:
    """A tool that raises, an unknown tool, a malformed call: the model reads an error result;
    a tool past tool_timeout_s: killed, the episode (its environment's state gone) ends; a tool
    whose process exits: its episode fails and is not trained on. All counted; three steps run."""
    _, rows, _ = scripted_run
    assert [r["step"] for r in rows] == [0, 1, 2]
    for key in ("agent/tool_ok", "agent/tool_error", "agent/tool_unknown_tool", "agent/tool_bad_call",
                "agent/parse_errors", "agent/tool_timeout", "agent/cut_tool_timeout", "agent/failed_episodes",
                "agent/turns_cut"):
        assert _total(rows, key) > 0, key
    assert all(r["agent/episodes"] == 16 for r in rows)
    assert all(r["agent/turns_mean"] > 1 for r in rows)  # multi-turn
    assert all(r["train/loss"] == r["train/loss"] for r in rows)  # finite: trained on the surviving episodes


@pytest.mark.vllm
def test_trl_environment_class_unchanged_get_reward_and_trl_reward_on_the_conversation(scripted_run) -> None:
    """CounterEnv is written to TRL's contract: its `increment` is a tool, its `get_reward` is one
    more reward source named after the class; a TRL reward function gets each episode as its
    messages (it counts the tool results the model read), and one taking `environments` calls
    `get_reward()` on them as in TRL's examples."""
    _, rows, _ = scripted_run
    assert all("reward/CounterEnv/mean" in r for r in rows)
    assert max(r["reward/CounterEnv/mean"] for r in rows) > 0  # increment ran in the episodes' own instances
    # The scripted parser deals its calls to turns in the order threads ask, so how many tool results
    # an episode gets varies from run to run; that the reward saw some is what is checked.
    assert max(r["reward/tool_messages/mean"] for r in rows) > 0
    # TRL's own reward pattern, `[e.get_reward() for e in environments]`, reads the same values.
    assert all(r["reward/env_reward/mean"] == pytest.approx(r["reward/CounterEnv/mean"]) for r in rows)


@pytest.mark.vllm
def test_r3_routes_are_replayed_across_turns(scripted_run) -> None:
    """Routing replay R3 over multi-turn rows: every position of prompt, sampled turns and tool
    results carries the engine's routes (the learner checks their shape per row), and the
    learner's own routing agrees with the engine's on nearly every token (misaligned routes across
    a tool result would disagree on about half)."""
    _, rows, _ = scripted_run
    mismatch = [r["routing/mismatch_mean"] for r in rows]
    assert all(m < 0.05 for m in mismatch), mismatch


@pytest.mark.vllm
def test_a_stream_of_environment_failures_stops_the_run_with_one_line(tmp_path: Path) -> None:
    environment = {"factory": f"{ENVS}/trl_counter.py:BrokenEnv", "max_failed_steps": 2}
    recipe = _recipe(tmp_path, "broken", 6, environment, [{"name": f"{ENVS}/trl_counter.py:tool_messages"}])
    proc = _cli(["train", str(recipe)])
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode != 0
    last = out.strip().splitlines()[-1]
    assert "environment BrokenEnv: more than 50% of the episodes failed in 2 steps in a row" in last, out[-3000:]
    assert "the environment's backend is down" in last and "saved checkpoint" in last
    assert len(_metrics(tmp_path / "broken")) == 2


@pytest.mark.vllm
def test_async_k1_multi_turn_episodes_resume_after_sigkill(tmp_path: Path) -> None:
    """k = 1 with episodes of up to three turns (two calculator calls, then an answer): no trained
    token lags more than one version; killed after the step-2 checkpoint and resumed, the run
    finishes every step once."""
    environment = {"tools": ["calculator"], "tool_parser": f"{ENVS}/scripted.py:counting_calculator",
                   "max_turns": 3, "max_turn_tokens": 8}
    recipe = _recipe(tmp_path, "async", 5, environment, [{"name": f"{ENVS}/trl_counter.py:tool_messages"}],
                     rollout={"max_staleness": 1}, checkpoint={"every": 2})
    run_dir = tmp_path / "async"
    proc = _cli(["train", str(recipe)], start_new_session=True)
    wait_for_path(run_dir / "checkpoints" / "step-000002", proc, timeout=900)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = _cli(["train", str(recipe)])
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-4000:]
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(5))
    assert all(r["async/staleness_max"] <= 1 for r in rows)
    assert _total(rows, "agent/tool_ok") > 0 and all(r["agent/turns_mean"] > 1 for r in rows if "agent/turns_mean" in r)
    trained = [json.loads(line) for line in (run_dir / "async.jsonl").read_text().splitlines()]
    assert [t["step"] for t in trained] == list(range(5))


def test_a_tool_that_does_not_import_or_has_no_schema_fails_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "tools.py").write_text("def add(a, b):\n    return a + b\n")
    for tool, expected in ((f"{tmp_path}/tools.py:add", "environment.tools[0]"),
                           ("no_such_module_xyz:tool", "environment.tools[0] 'no_such_module_xyz:tool'")):
        recipe = _recipe(tmp_path, "bad", 1, {"tools": [tool]}, [{"name": "exact_answer"}])
        proc = _cli(["train", str(recipe)])
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0
        lines = [line for line in out.strip().splitlines() if line.strip()]
        assert expected in lines[-1], out[-2000:]
        assert "Traceback" not in out
        assert not (tmp_path / "bad" / "metrics.jsonl").exists()
