"""An episode's tools in a process of their own (ling_rl/environments/process.py): TRL's result
rules, and hostile tools (tests/environments/hostile_tools.py) that hang, crash, flood, scribble on
the connection or leave processes behind. Each stays within its time bound, gets the right status,
and leaves nothing running after close()."""

from __future__ import annotations

import inspect
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path

import hostile_tools
import psutil
import pytest

from ling_rl.environments.config import EnvironmentConfig
from ling_rl.environments.loading import resolve_environment
from ling_rl.environments.process import EnvironmentFailure, EnvironmentProcess
from ling_rl.environments.spec import ResolvedEnvironment

HOSTILE = Path(hostile_tools.__file__).resolve()
TOOL_TIMEOUT_S = 1.0
HANG_S = 0.5  # the limit given to calls that hang: each such call costs this much
BOUND_S = 5.0  # a killed tool's call returns well within this (its timeout is 1 s)


def resolved(*tools: str, factory: str | None = None) -> ResolvedEnvironment:
    """By hand, not `resolve_environment`: that one refuses some of these environments up front."""
    names = list(tools)
    has_reward = False
    if factory is not None:
        cls = getattr(hostile_tools, factory)
        names += [n for n, _ in inspect.getmembers(cls, inspect.isfunction)
                  if n not in ("reset", "get_reward") and not n.startswith("_")]
        has_reward = hasattr(cls, "get_reward")
    return ResolvedEnvironment(
        tool_refs=tuple(f"{HOSTILE}:{t}" for t in tools), factory_ref=f"{HOSTILE}:{factory}" if factory else None,
        tool_names=tuple(names), schemas=(), env_name=factory, has_reward=has_reward, workdir=str(HOSTILE.parent))


def episode(env: ResolvedEnvironment, max_output_chars: int = 2000, log_path: str | None = None,
            timeout_s: float = 30.0) -> EnvironmentProcess:
    return EnvironmentProcess(env, timeout_s=timeout_s, max_output_chars=max_output_chars, log_path=log_path)


@pytest.fixture
def tools() -> Iterator[EnvironmentProcess]:
    process = episode(resolved("add", "async_add", "loop_identity", "process_ids", "raise_error",
                               "raise_infrastructure", "unprintable_result", "raise_unprintable", "sleep_forever",
                               "ignore_sigterm_and_sleep", "exit_abruptly", "garbage_to_every_fd", "send_pickle"))
    process.start()
    yield process
    process.close()


def episode_pids(process: EnvironmentProcess) -> list[int]:
    """The runner's pid and its supervisor's."""
    result = process.call("process_ids", {}, TOOL_TIMEOUT_S)
    assert result.status == "ok", result
    return [int(pid) for pid in result.content.split()]


def assert_gone(pids: list[int]) -> None:
    """Each process has ended (a zombie has ended: it only waits to be reaped)."""
    deadline = time.monotonic() + BOUND_S
    for pid in pids:
        while True:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            assert time.monotonic() < deadline, f"process {pid} still running"
            time.sleep(0.02)


def test_results_follow_trl(tools: EnvironmentProcess) -> None:
    ok = tools.call("add", {"a": 2, "b": 3}, TOOL_TIMEOUT_S)
    assert (ok.name, ok.status, ok.content, ok.truncated, ok.extra) == ("add", "ok", "5", False, {})
    assert tools.call("async_add", {"a": 2, "b": 40}, TOOL_TIMEOUT_S).content == "42"
    raised = tools.call("raise_error", {"what": "no such city"}, TOOL_TIMEOUT_S)
    assert (raised.status, raised.content) == ("error", str({"error": "no such city"}))  # TRL's text
    infra = tools.call("raise_infrastructure", {}, TOOL_TIMEOUT_S)
    assert (infra.status, infra.extra) == ("error", {"infrastructure": True})
    unknown = tools.call("divide", {"a": 1}, TOOL_TIMEOUT_S)
    assert unknown.status == "unknown_tool" and "'divide'" in unknown.content and "add, async_add" in unknown.content
    for arguments in ({"a": 1}, {"a": 1, "b": 2, "c": 3}):
        bad = tools.call("add", arguments, TOOL_TIMEOUT_S)
        assert bad.status == "bad_call" and "bad arguments for add" in bad.content, bad
    assert tools.call("add", {"a": object()}, TOOL_TIMEOUT_S).status == "bad_call"  # not JSON
    unprintable = tools.call("unprintable_result", {}, TOOL_TIMEOUT_S)
    assert unprintable.status == "error" and "no text for you" in unprintable.content
    assert tools.call("raise_unprintable", {}, TOOL_TIMEOUT_S).status == "error"
    # async tools share one event loop for the process's life
    first, second = (tools.call("loop_identity", {}, TOOL_TIMEOUT_S).content.split() for _ in range(2))
    assert first[0] == second[0] and (first[1], second[1]) == ("0", "1")
    assert tools.alive


def test_a_resolved_recipe_section() -> None:
    """What the driver resolves from the recipe is what the process loads: a built-in and a file tool."""
    env = resolve_environment(EnvironmentConfig(tools=["calculator", f"{HOSTILE}:add"]))
    process = EnvironmentProcess(env, timeout_s=30.0, max_output_chars=2000)
    process.start()
    try:
        assert process.call("calculator", {"expression": "123456789 * 987654321"}, 10.0).content == "121932631112635269"
        assert process.call("add", {"a": 1, "b": 2}, 10.0).content == "3"
        assert process.reset({"prompt": "p"}) is None and process.get_reward() is None  # tools only
    finally:
        process.close()


def test_timeouts_kill_the_process_and_tools_restart(tools: EnvironmentProcess) -> None:
    for hanging in ("sleep_forever", "ignore_sigterm_and_sleep"):
        before = episode_pids(tools)
        started = time.monotonic()
        result = tools.call(hanging, {}, HANG_S)
        assert time.monotonic() - started < BOUND_S
        assert result.status == "timeout" and "within 0.5 s" in result.content, result
        assert_gone(before)
        assert tools.alive  # tools only: no state was lost
        assert episode_pids(tools) != before  # a new process answers
        assert tools.call("add", {"a": 1, "b": 1}, TOOL_TIMEOUT_S).content == "2"


def test_crash_and_broken_protocol_are_crashed(tools: EnvironmentProcess, tmp_path: Path) -> None:
    before = episode_pids(tools)
    crashed = tools.call("exit_abruptly", {}, TOOL_TIMEOUT_S)
    assert crashed.status == "crashed" and "exited with code 3" in crashed.content, crashed
    assert_gone(before)
    for hostile, arguments in (("garbage_to_every_fd", {}), ("send_pickle", {"marker": str(tmp_path / "pwned")})):
        before = episode_pids(tools)
        result = tools.call(hostile, arguments, TOOL_TIMEOUT_S)
        assert result.status == "crashed", result
        assert_gone(before)
    assert not (tmp_path / "pwned").exists()  # the pickle was never unpickled
    assert tools.call("add", {"a": 1, "b": 1}, TOOL_TIMEOUT_S).status == "ok"


def test_output_is_cut_and_printing_stays_out_of_the_protocol(tmp_path: Path) -> None:
    log = tmp_path / "episode.log"
    process = episode(resolved("huge_result", "huge_print"), max_output_chars=100, log_path=str(log))
    process.start()
    try:
        cut = process.call("huge_result", {}, 30.0)
        assert cut.status == "ok" and cut.truncated
        assert cut.content.startswith("x" * 100 + "\n[truncated: 10000000 characters")
        assert len(cut.content) < 200
        printed = process.call("huge_print", {}, 30.0)
        assert (printed.status, printed.content) == ("ok", "printed")
    finally:
        process.close()
    assert log.stat().st_size >= 11_000_000  # stdout and stderr went to the log


def test_nothing_outlives_close(tmp_path: Path) -> None:
    process = episode(resolved("spawn_sleeper", "spawn_session_sleeper", "double_fork", "process_ids"))
    process.start()
    pids = episode_pids(process)
    for spawner in ("spawn_sleeper", "spawn_session_sleeper", "double_fork"):
        result = process.call(spawner, {}, TOOL_TIMEOUT_S)
        assert result.status == "ok", result
        pids.append(int(result.content))
        assert psutil.Process(pids[-1]).status() != psutil.STATUS_ZOMBIE
    process.close()
    process.close()  # idempotent
    assert_gone(pids)
    assert not process.alive
    assert process.call("spawn_sleeper", {}, TOOL_TIMEOUT_S).status == "crashed"


def test_a_stopped_supervisor_is_killed_from_outside() -> None:
    process = episode(resolved("stop_supervisor_and_sleep", "process_ids"))
    process.start()
    pids = episode_pids(process)
    started = time.monotonic()
    assert process.call("stop_supervisor_and_sleep", {}, HANG_S).status == "timeout"
    assert time.monotonic() - started < BOUND_S
    assert_gone(pids)
    process.close()


def test_episodes_in_threads() -> None:
    """The episode loop runs one episode per worker thread."""
    env = resolved("add", "process_ids")

    def one(i: int) -> tuple[str, list[int]]:
        process = episode(env)
        process.start()
        try:
            return process.call("add", {"a": i, "b": 1}, 10.0).content, episode_pids(process)
        finally:
            process.close()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(8)))
    assert [content for content, _ in results] == [str(i + 1) for i in range(8)]
    assert len({pid for _, pids in results for pid in pids}) == 16
    assert_gone([pid for _, pids in results for pid in pids])


def test_a_daemon_left_by_a_crashing_tool_is_killed(tmp_path: Path) -> None:
    process = episode(resolved("escape_and_exit"))
    process.start()
    pid_file = tmp_path / "daemon.pid"
    try:
        result = process.call("escape_and_exit", {"pid_file": str(pid_file)}, TOOL_TIMEOUT_S)
        assert result.status == "crashed" and "exited with code 3" in result.content, result
        assert_gone([int(pid_file.read_text())])  # before close: the supervisor killed it when the runner died
    finally:
        process.close()


def test_factory_environment_keeps_state_and_loses_it_on_timeout() -> None:
    process = episode(resolved("add", factory="Counter"))
    process.start()
    try:
        assert process.reset({"prompt": "count", "target": 3}) == " Count to 3."
        assert process.call("increment", {"by": 2}, TOOL_TIMEOUT_S).content == "2"
        assert process.call("increment", {"by": 1}, TOOL_TIMEOUT_S).content == "3"
        assert process.call("read", {}, TOOL_TIMEOUT_S).content == "3"  # async method
        assert process.call("add", {"a": 1, "b": 2}, TOOL_TIMEOUT_S).content == "3"  # a plain tool beside it
        assert process.get_reward() == 1.0
        assert process.call("sleep_forever", {}, HANG_S).status == "timeout"
        assert not process.alive  # the counter died with the process
        after = process.call("increment", {"by": 1}, TOOL_TIMEOUT_S)
        assert after.status == "crashed" and "ran past its 0.5 s limit" in after.content, after
        with pytest.raises(EnvironmentFailure, match="get_reward impossible"):
            process.get_reward()
    finally:
        process.close()


def test_async_reset_and_reward() -> None:
    process = episode(resolved(factory="AsyncEnv"))
    process.start()
    try:
        assert process.reset({"prompt": "hello"}) is None
        assert process.call("echo", {}, TOOL_TIMEOUT_S).content == "hello"
        assert process.get_reward() == 5.0
    finally:
        process.close()


@pytest.mark.parametrize(("factory", "message"), [
    ("NanReward", "get_reward returned nan, not a finite number"),
    ("StringReward", "get_reward failed: get_reward returned str, not a number"),
    ("SleepingReward", "get_reward took over 1 s"),
])
def test_bad_rewards_fail_the_episode(factory: str, message: str) -> None:
    process = episode(resolved(factory=factory), timeout_s=TOOL_TIMEOUT_S)
    process.start()
    try:
        assert process.reset({"prompt": "p"}) is None
        started = time.monotonic()
        with pytest.raises(EnvironmentFailure, match=message):
            process.get_reward()
        assert time.monotonic() - started < BOUND_S
        assert not process.alive
    finally:
        process.close()


@pytest.mark.parametrize(("factory", "row", "message"), [
    ("ResetRaises", {"prompt": "p"}, "reset failed: reset raised KeyError: 'missing column'"),
    ("ResetReturnsNumber", {"prompt": "p"}, "reset returned int, not a str or None"),
    ("NanReward", {"prompt": "p", "when": object()}, "dataset row column 'when' is not JSON data"),
])
def test_bad_resets_fail_the_episode(factory: str, row: dict[str, object], message: str) -> None:
    process = episode(resolved(factory=factory))
    process.start()
    try:
        with pytest.raises(EnvironmentFailure, match=message):
            process.reset(row)
    finally:
        process.close()


def test_a_factory_that_raises_does_not_start() -> None:
    process = episode(resolved(factory="InitRaises"))
    with pytest.raises(EnvironmentFailure, match="environment InitRaises: loading the tools failed: "
                                                 "RuntimeError: cannot build this environment"):
        process.start()
    assert not process.alive
    process.close()
