"""No training on no signal: judge plugins check their endpoint when the reward workers start, and
a run whose reward signal is gone for `reward_signal.max_failed_steps` steps stops (issue 10 item 16)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ling_rl.reward.config import RewardSpec
from ling_rl.reward.pool import RewardPool, RewardWorkerError

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
