"""`code` reward and its sandbox: scoring, and hostile programs that must fail without touching the host.

Each hostile program comes with a test that passes only if its attack worked, so a 0.0 score shows
the attack was stopped; the host checks (sentinel file, temp folders, the repo, leftover processes
of the sandbox uids, live parent) show nothing leaked.
"""

from __future__ import annotations

import doctest
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import rewards.code
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.pool import RewardPool
from ling_rl.types import Rollout, Sample
from rewards import sandbox
from rewards.code import Code, extract_code, run_tests
from rewards.sandbox import SANDBOX_UID_BASE, SANDBOX_UID_COUNT, TEMP_PREFIX, SandboxLimits, SandboxUnavailable, run_python

REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=512)

pytestmark = pytest.mark.skipif(sandbox.available_isolation() is None, reason="no sandbox here (install bubblewrap)")


@dataclass
class Host:
    """What a hostile program would touch: a world-readable and -writable sentinel, escape paths."""

    sentinel: Path
    token: str
    tmp_escape: Path
    repo_escape: Path


@pytest.fixture
def host() -> Iterator[Host]:
    token = secrets.token_hex(6)
    folder = Path(f"/tmp/ling-host-sentinel-{token}")
    folder.mkdir()
    folder.chmod(0o777)  # even a folder any uid may write to must stay out of reach
    sentinel = folder / "secret.txt"
    sentinel.write_text("secret")
    sentinel.chmod(0o666)
    before = _sandbox_temp_folders()
    parent = os.getppid()
    state = Host(sentinel, token, Path(f"/tmp/ling_escape_{token}"), REPO / f"ling_escape_{token}")
    yield state
    try:
        assert sentinel.read_text() == "secret"
        assert sorted(p.name for p in folder.iterdir()) == ["secret.txt"]
        assert not state.tmp_escape.exists() and not state.repo_escape.exists()
        assert _sandbox_temp_folders() <= before, "a sandbox run left its temp folder behind"
        assert _sandbox_uid_processes() == [], "processes of a sandbox uid outlived their run"
        assert os.getppid() == parent  # pytest's parent is alive (nothing killed up the tree)
        os.kill(parent, 0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sandbox_temp_folders() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir() if p.name.startswith(TEMP_PREFIX)}


def _sandbox_uid_processes() -> list[int]:
    """Live processes of the sandbox uids. Zombies are dead (no memory, no CPU, no files) and wait
    for the host's init to reap them, which this container's init does only every second or so."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue  # exited meanwhile
        uid = int(fields["Uid"].split()[0])
        if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_COUNT and not fields["State"].strip().startswith("Z"):
            found.append(int(status.parent.name))
    return found


def hostile_programs(h: Host, port: int) -> dict[str, tuple[str, list[str]]]:
    """name -> (solution, tests); every test passes only if the attack succeeded."""
    return {
        "loops forever": ("while True:\n    pass\n", ["assert True"]),
        "allocates 10 GB": ("blob = bytearray(10 * 1024**3)\n", ["assert len(blob) == 10 * 1024**3"]),
        "forks endlessly": (
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            ["assert True"],
        ),
        "socket to 127.0.0.1": (
            f"import socket\nconn = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nconn.sendall(b'hi')\n",
            ["assert conn"],
        ),
        "reads outside": (f"data = open({str(h.sentinel)!r}).read()\n", ["assert data == 'secret'"]),
        "writes outside": (
            f"open({str(h.sentinel)!r}, 'w').write('pwned')\nopen({str(h.repo_escape)!r}, 'w').write('x')\n",
            ["assert True"],
        ),
        "kills its parent": (
            "import os, signal, time\nparent = os.getppid()\nos.kill(parent, signal.SIGKILL)\ntime.sleep(0.3)\n"
            "def alive(pid):\n    try:\n        os.kill(pid, 0)\n        return True\n    except ProcessLookupError:\n        return False\n",
            ["assert not alive(parent)"],
        ),
        "kills everything it can": ("import os, signal\nos.kill(-1, signal.SIGKILL)\n", ["assert True"]),
    }


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def _accepted_connection(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize("name", list(hostile_programs(Host(Path("/x"), "", Path("/x"), Path("/x")), 1)))
def test_hostile_program_fails_and_host_is_untouched(name: str, host: Host, listener: socket.socket) -> None:
    solution, tests = hostile_programs(host, listener.getsockname()[1])[name]
    start = time.monotonic()
    result = run_tests(solution, tests, LIMITS)
    assert result.passed == [False] * len(tests), f"{name}: the attack worked"
    assert time.monotonic() - start < LIMITS.timeout_s + 3  # stopped by the time limit at the latest
    assert not _accepted_connection(listener)


def test_writes_to_tmp_stay_in_the_sandbox(host: Host) -> None:
    """/tmp inside is a private tmpfs: writing there works but never reaches the host's /tmp."""
    solution = f"open({str(host.tmp_escape)!r}, 'w').write('x')\n"
    assert run_tests(solution, [f"assert open({str(host.tmp_escape)!r}).read() == 'x'"], LIMITS).passed == [True]


def test_detached_child_is_killed_with_the_run(host: Host) -> None:
    solution = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(60)\n    os._exit(0)\n"
    )
    start = time.monotonic()
    assert run_tests(solution, ["assert True"], LIMITS).passed == [True]
    assert time.monotonic() - start < 2.0  # the sleeper holds no output pipe: the run returns at once


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="the unshare fallback needs root")
def test_unshare_fallback_blocks_network_tmp_writes_and_spins(host: Host, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    net = run_python({"main.py": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('in')"}, LIMITS, isolation="unshare")
    assert "in" not in net.stdout and "Network is unreachable" in net.stderr
    write = run_python({"main.py": f"open({str(host.tmp_escape)!r}, 'w').write('x')\nprint('ok')"}, LIMITS, isolation="unshare")
    assert write.stdout.strip() == "ok"  # into the masking tmpfs; the host check asserts it is not there
    spin = run_python({"main.py": "while True: pass"}, LIMITS, isolation="unshare")
    assert spin.timed_out and spin.returncode in (-9, 137)
    assert not _accepted_connection(listener)


def test_no_sandbox_means_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the tools nothing runs: no silent unsandboxed fallback."""
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox._probe.cache_clear()
    try:
        assert sandbox.available_isolation() is None
        with pytest.raises(SandboxUnavailable, match="bubblewrap"):
            run_python({"main.py": "print(1)"}, LIMITS)
        with pytest.raises(SandboxUnavailable):
            Code()
    finally:
        monkeypatch.undo()
        sandbox._probe.cache_clear()
    assert sandbox.available_isolation() is not None


def test_scores_fraction_and_all_or_nothing() -> None:
    good = "```python\ndef sq(x):\n    return x * x\n```"
    half = "def sq(x):\n    return x * 2"  # right for 0 and 2 only
    broken = "```python\ndef sq(x) return x\n```"
    raises = "raise SystemExit(0)"
    tests = ["assert sq(0) == 0", "assert sq(2) == 4", "assert sq(3) == 9", "assert sq(-1) == 1"]
    call = {"prompts": ["?"] * 5, "completions": [good, half, broken, raises, good], "tests": [tests] * 4 + [None]}
    out = Code(timeout_s=5)(**call)
    assert out.scores == [1.0, 0.5, 0.0, 0.0, None]
    assert out.metrics["all_passed"] == 0.25 and out.metrics["solution_failed"] == 0.5 and out.metrics["timed_out"] == 0.0
    assert Code(mode="all_or_nothing", timeout_s=5)(**call).scores == [1.0, 0.0, 0.0, 0.0, None]


def test_tests_as_one_string_and_tests_after_a_hang() -> None:
    solution = "def f():\n    return 1\n"
    assert run_tests(solution, ["x = f()\nassert x == 1"], LIMITS).passed == [True]
    # Tests run in order; one that hangs takes itself and the later ones down, not the earlier ones.
    result = run_tests(solution, ["assert f() == 1", "while True: pass", "assert True"], LIMITS)
    assert result.passed == [True, False, False] and result.timed_out
    assert Code(timeout_s=5)(prompts=["?"], completions=[solution], tests=["assert f() == 1"]).scores == [1.0]


def test_forged_reports_do_not_count() -> None:
    """The harness's token is secret: a program printing pass lines of its own gains nothing."""
    forger = "import sys\nfor i in range(3):\n    print('0' * 32, i, 1)\nsys.stdout.flush()\nraise SystemExit(0)\n"
    assert run_tests(forger, ["assert False"] * 3, LIMITS).passed == [False] * 3


def test_extract_code_prefers_the_last_python_block() -> None:
    text = "```text\nnot code\n```\n```python\nfirst = 1\n```\nthen\n```py\nsecond = 2\n```"
    assert extract_code(text) == "second = 2\n"
    assert extract_code("```\nplain = 1\n```") == "plain = 1\n"
    assert extract_code("value = 3") == "value = 3"


def test_bad_args_and_tests_are_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        Code(mode="partial")
    with pytest.raises(ValueError, match="tests"):
        Code()(prompts=["?"], completions=["x = 1"], tests=[[1, 2]])


def test_docstring_examples() -> None:
    result = doctest.testmod(rewards.code, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_hostile_code_through_the_pool(ray_session: None, host: Host) -> None:
    """The reward worker survives hostile programs: no failure, no replaced worker, right scores."""
    programs = hostile_programs(host, 9)
    chosen = ["kills its parent", "kills everything it can", "forks endlessly", "loops forever"]
    rows = [("def f():\n    return 1", ["assert f() == 1"])] + [programs[name] for name in chosen]
    rollouts = []
    for g, (solution, tests) in enumerate(rows):
        sample = Sample(id=f"c{g}", prompt="write f", prompt_ids=[1], columns={"tests": tests})
        rollouts.append(Rollout(sample=sample, group=g, response_ids=[3], response_text=solution,
                                inf_logprobs=[0.0], finish_reason="stop", policy_version=0))
    spec = RewardSpec(name="code", args={"timeout_s": 2.0, "max_parallel": 2}, timeout_s=30)
    with RewardPool([spec], num_workers=1, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(rollouts)
        again, _ = pool.score(rollouts[:1])  # the same worker still scores afterwards
    assert [s.breakdown["code"] for s in scored] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert again[0].breakdown["code"] == 1.0
    assert metrics.plugins["code"].failures == 0 and metrics.plugins["code"].timeouts == 0
    assert metrics.workers_replaced == 0
