"""No training on no signal: judge plugins check their endpoint when the reward workers start, and
a run whose reward signal is gone for `reward_signal.max_failed_steps` steps stops (issue 10 item 16)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ling_rl.reward.config import RewardSpec
from ling_rl.reward.pool import RewardPool, RewardWorkerError

ROOT = Path(__file__).resolve().parents[2]
START_JUDGE = "python -m vllm.entrypoints.openai.api_server --model DIR --trust-remote-code --host 127.0.0.1 --port N"


def _closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago and is closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _judge_plugins(judge: dict[str, Any]) -> list[tuple[str, Any]]:
    from rewards.aesthetics import Aesthetics
    from rewards.gar import GroupArena
    from rewards.rubric import Rubric
    from rewards.sfa import SyntaxFunctionAesthetics

    return [("gar", GroupArena(judge=judge)), ("rubric", Rubric(judge=judge)), ("aesthetics", Aesthetics(judge=judge)),
            ("sfa", SyntaxFunctionAesthetics(judge=judge))]


def test_judge_plugins_check_their_endpoint() -> None:
    url = _closed_port_url()
    for name, plugin in _judge_plugins({"base_url": url, "model": "judge"}):
        with pytest.raises(RuntimeError) as err:
            plugin.startup_check()
        message = str(err.value)
        assert "\n" not in message, name
        assert f"{url}/models" in message and START_JUDGE in message, (name, message)


def test_plugins_without_a_judge_need_no_endpoint() -> None:
    from rewards.aesthetics import Aesthetics
    from rewards.sfa import SyntaxFunctionAesthetics

    Aesthetics().startup_check()  # the layout proxy: nothing to reach
    SyntaxFunctionAesthetics().startup_check()


def test_pool_start_fails_in_one_line_naming_plugin_and_endpoint(ray_session: None) -> None:
    url = _closed_port_url()
    specs = [RewardSpec(name="gar", args={"judge": {"base_url": url, "model": "judge"}})]
    with pytest.raises(RewardWorkerError) as err:
        RewardPool(specs, worker_cpus=0.25, start_timeout_s=60)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("reward plugin 'gar' could not start: ") and url in message and START_JUDGE in message


# --- reward_signal.max_failed_steps: the streak logic --------------------------------------------


def _step(failures: dict[str, tuple[int, int]], groups: list[list[float]]) -> tuple[dict[str, float], list[Any]]:
    """Reward metrics with (failed or timed-out calls, calls) per plugin, and scored groups."""
    from tests.curriculum.curriculum_helpers import group

    metrics: dict[str, float] = {}
    for key, (failed, calls) in failures.items():
        metrics.update({f"reward/{key}/calls": calls, f"reward/{key}/failures": failed, f"reward/{key}/timeouts": 0})
    return metrics, [r for g, rewards in enumerate(groups) for r in group(f"q{g}", g, rewards)]


SPECS = [RewardSpec(name="judge_like", weight=1.0), RewardSpec(name="logged_only", weight=0.0)]
VARIED = [[1.0, 0.0], [0.5, 0.5]]
FLAT = [[1.0, 1.0], [0.0, 0.0]]


def test_a_weighted_plugin_failing_every_call_stops_after_max_failed_steps() -> None:
    from ling_rl.reward.signal import SignalMonitor

    monitor = SignalMonitor(max_failed_steps=3, specs=SPECS)
    failing = _step({"judge_like": (4, 4), "logged_only": (0, 4)}, VARIED)
    assert monitor.observe(0, *failing) is None
    assert monitor.observe(1, *failing) is None
    reason = monitor.observe(2, *failing)
    assert reason is not None and "3 consecutive steps (0-2)" in reason
    assert "every call of reward plugin 'judge_like' failed" in reason and "reward_signal.max_failed_steps=3" in reason


def test_a_step_with_signal_resets_the_streak() -> None:
    from ling_rl.reward.signal import SignalMonitor

    monitor = SignalMonitor(max_failed_steps=2, specs=SPECS)
    partly = _step({"judge_like": (3, 4), "logged_only": (0, 4)}, VARIED)  # one call of four succeeded
    flat = _step({"judge_like": (0, 4), "logged_only": (0, 4)}, FLAT)
    assert monitor.observe(0, *flat) is None
    assert monitor.observe(1, *partly) is None  # resets
    assert monitor.observe(2, *flat) is None
    reason = monitor.observe(3, *flat)
    assert reason is not None and "every group flat" in reason and "2 consecutive steps (2-3)" in reason


def test_failures_of_a_weight0_plugin_are_not_a_missing_signal() -> None:
    from ling_rl.reward.signal import SignalMonitor

    monitor = SignalMonitor(max_failed_steps=1, specs=SPECS)
    assert monitor.observe(0, *_step({"judge_like": (0, 4), "logged_only": (4, 4)}, VARIED)) is None


def test_no_trained_group_counts_as_flat_and_zero_disables_the_check() -> None:
    from ling_rl.reward.signal import SignalMonitor

    healthy = {"reward/judge_like/calls": 4, "reward/judge_like/failures": 0, "reward/judge_like/timeouts": 0}
    assert SignalMonitor(max_failed_steps=1, specs=SPECS).observe(0, healthy, []) is not None
    off = SignalMonitor(max_failed_steps=0, specs=SPECS)
    assert all(off.observe(step, *_step({"judge_like": (4, 4)}, FLAT)) is None for step in range(10))


@pytest.mark.vllm
def test_run_without_signal_saves_a_checkpoint_and_stops(tmp_path: Path) -> None:
    """A tiny run whose only plugin always raises: steps 0 and 1 run, step 1 is saved, exit 1, one line."""
    overrides = {
        "run.steps": 4, "run.output_dir": str(tmp_path), "run.name": "no-signal", "reward_signal.max_failed_steps": 2,
        "rewards": '[{name: "tests/reward/plugins/ling_test_rewards.py:raises", alias: broken}]',
        "learner.num_ranks": 1, "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_response_tokens": 8,
        "checkpoint.every": 0,
        "tracking.progress_bar": False,
    }
    env = dict(os.environ, WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", "train", "recipes/tiny_cpu.yaml",
                           *(f"{k}={v}" for k, v in overrides.items())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    run_dir = tmp_path / "no-signal"
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert ("no reward signal for 2 consecutive steps (0-1): every call of reward plugin 'broken' failed" in errors[0]
            and f"saved checkpoint {run_dir / 'checkpoints' / 'step-000002'}" in errors[0]), errors[0]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000002"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
