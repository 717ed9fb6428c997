"""The quiet console (`ling_rl/run_logs.py`): ling-rl's progress and errors on the console, the
roles' output in RUN_DIR/logs/, a role's crash shown with the tail of its log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ling_rl import run_logs
from ling_rl.cluster.config import ClusterConfig, RoleResources
from ling_rl.cluster.placement import actor_options
from ling_rl.config import load_recipe
from ling_rl.learner.group import LearnerError
from ling_rl.rollout.group import RolloutError
from ling_rl.driver.session import custom_demand

ROOT = Path(__file__).resolve().parents[1]

NOISE = re.compile(r"WARNING|FutureWarning|DeprecationWarning|UserWarning|Triton|tcmalloc|NUMA|libiomp|torchao|"
                   r"pid=\d+|\((RolloutEngine|LearnerWorker|RewardWorker|raylet)|Started a local Ray|wandb:|"
                   r"Loading safetensors")
"""Lines of vLLM, Ray, torch, W&B and library warnings that a quiet console must not show."""


def _train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", "train", "recipes/tiny_cpu.yaml", "checkpoint.every=0",
                           "tracking.progress_bar=false", *overrides, "--run-dir", str(run_dir)],
                          cwd=ROOT, env=dict(os.environ, WANDB_MODE="offline"), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.vllm
def test_console_shows_progress_and_the_log_files_hold_the_roles_output(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _train(run_dir, "run.steps=2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    noise = [line for line in lines if NOISE.search(line)]
    assert not noise, noise
    logs = run_dir / "logs"
    assert str(logs) in lines[0]  # named in the first line printed
    assert [line.split(" |")[0] for line in lines if line.startswith("step ")] == ["step 1/2", "step 2/2"]
    engine_log = (logs / "engine-0.log").read_text()
    # vLLM's own output (its WARNING lines vary from run to run: a fresh-clone CI run had none).
    assert "Loading safetensors" in engine_log
    assert {p.name for p in logs.glob("*.log")} >= {"engine-0.log", "learner-0.log", "learner-1.log", "reward-0.log",
                                                     "driver.log"}


@pytest.mark.vllm
def test_an_engine_crash_reaches_the_console_with_its_log_tail(tmp_path: Path) -> None:
    """vLLM refuses a max_model_len above the model's 2048 positions: the engine dies while starting.
    The console shows the error and the last lines of engine-0.log, with its path."""
    run_dir = tmp_path / "run"
    proc = _train(run_dir, "run.steps=1", "rollout.max_response_tokens=4000")
    assert proc.returncode == 1
    log = run_dir / "logs" / "engine-0.log"
    assert f"last {run_logs.TAIL_LINES} lines of {log}:" in proc.stderr
    tail = proc.stderr.split(f"lines of {log}:", 1)[1]
    assert "max_model_len" in tail and "error: rollout engine 0" in proc.stderr


def test_failure_report_shows_the_named_actors_log(tmp_path: Path) -> None:
    for name in ("engine-0", "engine-1", "learner-0", "learner-1"):
        (tmp_path / f"{name}.log").write_text("".join(f"{name} line {i}\n" for i in range(50)))
    report = run_logs.failure_report(RolloutError("rollout engine 1 died during generate: boom"), tmp_path)
    assert report[0] == f"last {run_logs.TAIL_LINES} lines of {tmp_path / 'engine-1.log'}:"
    assert report[1:] == [f"  engine-1 line {i}" for i in range(50 - run_logs.TAIL_LINES, 50)]
    # A message without an actor index: every log of the role.
    both = run_logs.failure_report(LearnerError("learner setup: no answer from rank(s) [0, 1] within 60s"), tmp_path)
    assert [line for line in both if line.startswith("last")] == [
        f"last {run_logs.TAIL_LINES} lines of {tmp_path / f'learner-{r}.log'}:" for r in (0, 1)]
    assert run_logs.failure_report(ValueError("not a role's"), tmp_path) == []


def test_to_role_log_takes_the_process_and_its_children_output(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "engine-3.log"
    script = ("import os, subprocess, sys\n"
              "from ling_rl import run_logs\n"
              "run_logs.to_role_log()\n"
              "print('from python'); sys.stderr.write('to stderr\\n'); sys.stderr.flush()\n"
              "os.write(2, b'raw fd 2\\n')\n"
              "subprocess.run(['echo', 'from a child'])\n")
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, **{run_logs.ROLE_LOG_ENV: str(log)}),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""
    assert log.read_text().splitlines()[1:] == ["from python", "to stderr", "raw fd 2", "from a child"]
    assert log.read_text().startswith("[ling-rl] engine-3: pid ")


def test_actor_options_carry_placement_and_the_log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = RoleResources(num_cpus=2, resources={"node_learner": 1})
    assert actor_options(res, "learner-0", {"OMP_NUM_THREADS": "2"}) == {
        "num_cpus": 2, "num_gpus": 0, "resources": {"node_learner": 1.0},
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "2"}}}
    monkeypatch.setattr(run_logs, "_log_dir", tmp_path)  # as `route` leaves it, without its logging setup
    env = actor_options(RoleResources(), "engine-1")["runtime_env"]["env_vars"]
    assert env == {run_logs.ROLE_LOG_ENV: str(tmp_path / "engine-1.log")}


def test_placement_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="'CPU' is a built-in Ray resource"):
        ClusterConfig(learner={"resources": {"CPU": 1}})
    with pytest.raises(ValueError, match="must be > 0"):
        ClusterConfig(rollout={"resources": {"node_rollout": 0}})
    recipe = load_recipe(ROOT / "recipes/tiny_cpu.yaml", ["cluster.learner.resources={node_a: 1}",
                                                          "cluster.reward.resources={node_a: 0.5, node_b: 1}"])
    assert custom_demand(recipe) == {"node_a": ("cluster.learner.resources, cluster.reward.resources", 2.5),
                                     "node_b": ("cluster.reward.resources", 1.0)}


def test_route_keeps_library_warnings_in_driver_log_and_ling_rl_warnings_on_the_console(tmp_path: Path) -> None:
    script = ("import logging, sys, warnings\n"
              "from pathlib import Path\n"
              "from ling_rl import run_logs\n"
              f"run_logs.route(Path({str(tmp_path)!r}))\n"
              "warnings.warn('a library FutureWarning', FutureWarning)\n"
              "logging.getLogger('transformers.x').warning('a transformers warning')\n"
              "logging.getLogger('ling_rl.reward.pool').warning('reward plugin replaced')\n"
              "import ray\n"
              "run_logs.ray_driver_to_file()\n"
              "logging.getLogger('ray._private.worker').warning('a ray driver warning')\n"
              "print('progress line')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "progress line\n"
    assert proc.stderr == "WARNING: reward plugin replaced\n"
    driver = (tmp_path / "logs" / "driver.log").read_text()
    assert "a library FutureWarning" in driver and "a transformers warning" in driver and "reward plugin replaced" in driver
    assert "a ray driver warning" in driver
