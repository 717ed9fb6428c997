"""Sandboxes as infrastructure (issue 22 items 4 and 9): they work for a non-root user whose uid
already runs many threads, a sandbox that cannot start is an infrastructure failure (skipped and
counted, a run error when it repeats), never a score of 0, and sandbox uids are leased across
processes without collisions and released once.

The non-root tests run a script as uid 65534 (`nobody`). The project's interpreter lives under
/root (mode 700 here), so the script runs in a private mount namespace where /root is an empty
tmpfs with only the interpreter's prefix bound back in: nothing of the host's permissions changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ling_rl.reward.config import RewardSpec
from rewards import sandbox
from rewards.sandbox import SandboxError, SandboxLimits, lease_uid, run_python
from conftest import make_rollouts

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
FLOOD_THREADS = 60
"""Threads of the unprivileged uid before any sandbox starts: more than the code sandbox's process
limit (32), as a reward worker's Ray, torch and vLLM threads are."""

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv to another uid, uid leases)")
needs_sandbox = pytest.mark.skipif(sandbox.available_isolation() is None, reason="no sandbox here (install bubblewrap)")


# --- a sandbox that cannot start -----------------------------------------------------------------


@needs_sandbox
@pytest.mark.parametrize("isolation", ["bwrap", "unshare"])
def test_a_sandbox_that_cannot_start_raises_sandbox_error(isolation: str) -> None:
    """A 1 MB address space: the sandbox's own tools cannot load, so the program never runs. That
    is a SandboxError naming the cause, not a result with a failed program."""
    if isolation == "unshare" and os.geteuid() != 0:
        pytest.skip("the unshare fallback is root only")
    with pytest.raises(SandboxError, match=f"the {isolation} sandbox did not start"):
        run_python({"main.py": "print('ok')"}, SandboxLimits(memory_mb=1), isolation=isolation)
    # The program's own failure is still a result, not a SandboxError.
    failed = run_python({"main.py": "raise SystemExit(3)"}, SandboxLimits(), isolation=isolation)
    assert failed.returncode == 3


@needs_sandbox
def test_a_sandbox_that_cannot_start_is_skipped_and_counted_not_scored(ray_session: None, sample_plugins: Any) -> None:
    from ling_rl.reward.pool import RewardPool
    from ling_rl.reward.signal import absent_signal

    rollouts = make_rollouts([("p", "a", ["print(1)", "print(2)"]), ("q", "b", ["print(3)", "print(4)"])])
    specs = [RewardSpec(name="t_sandbox_cannot_start", error_value=0.0), RewardSpec(name="t_length", weight=0.0, required=False)]
    with RewardPool(specs, num_workers=1, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(rollouts)
    assert [s.breakdown["t_sandbox_cannot_start"] for s in scored] == [None] * 4  # never error_value 0.0
    assert all(s.skipped for s in scored)
    plugin = metrics.plugins["t_sandbox_cannot_start"]
    assert plugin.failures == plugin.infra_failures == plugin.calls > 0
    assert plugin.errors and plugin.errors[0].startswith("SandboxError: the ") and "did not start" in plugin.errors[0]
    flat = metrics.as_dict()
    assert flat["reward/t_sandbox_cannot_start/infra_failures"] == plugin.calls
    assert absent_signal(flat, scored, ["t_sandbox_cannot_start"]) is not None


def test_infrastructure_failures_stop_the_run_when_they_repeat() -> None:
    """One call of four with a sandbox that did not start makes the step one without signal, even
    though the other calls scored varied rewards; `max_failed_steps` of them in a row stop the run."""
    from ling_rl.reward.signal import SignalMonitor
    from tests.curriculum.curriculum_helpers import group

    specs = [RewardSpec(name="code", weight=1.0), RewardSpec(name="logged_only", weight=0.0)]
    scored = [r for g, rewards in enumerate([[1.0, 0.0], [0.5, 0.0]]) for r in group(f"q{g}", g, rewards)]
    broken = {"reward/code/calls": 4, "reward/code/failures": 1, "reward/code/infra_failures": 1, "reward/code/timeouts": 0}
    healthy = {**broken, "reward/code/failures": 0, "reward/code/infra_failures": 0}
    logged_only = {**healthy, "reward/logged_only/calls": 4, "reward/logged_only/infra_failures": 4}
    monitor = SignalMonitor(max_failed_steps=2, specs=specs)
    assert monitor.observe(0, broken, scored) is None
    assert monitor.observe(1, healthy, scored) is None  # a healthy step resets the streak
    assert monitor.observe(2, logged_only, scored) is None  # a weight-0 plugin's failures do not count
    assert monitor.observe(3, broken, scored) is None
    reason = monitor.observe(4, broken, scored)
    assert reason is not None and "2 consecutive steps (3-4)" in reason
    assert "1 of 4 calls of reward plugin 'code' hit an infrastructure failure" in reason


# --- uid leases (root) ---------------------------------------------------------------------------


@root_only
def test_a_uid_held_by_another_process_is_never_leased_and_a_crashed_holder_frees_it(tmp_path: Path) -> None:
    lock_dir, base = tmp_path, 64000
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom rewards.sandbox import lease_uid\n"
         f"lease = lease_uid({base}, 1, __import__('pathlib').Path({str(lock_dir)!r}))\nprint(lease.uid, flush=True)\ntime.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == str(base)
        leases = [lease_uid(base, 3, lock_dir) for _ in range(2)]  # the two uids the holder does not hold
        assert sorted(lease.uid for lease in leases) == [base + 1, base + 2]
        with pytest.raises(SandboxError, match="are in use"):
            lease_uid(base, 3, lock_dir)
    finally:
        holder.kill()  # a crash: its lock goes with its file descriptors
        holder.wait(timeout=10)
    freed = lease_uid(base, 3, lock_dir)
    assert freed.uid == base
    for lease in [*leases, freed]:
        lease.release()


@root_only
def test_threads_of_one_process_never_share_a_uid(tmp_path: Path) -> None:
    lock_dir, base = tmp_path, 64100
    got: list[Any] = []
    errors: list[Exception] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait(timeout=10)
        try:
            got.append(lease_uid(base, 8, lock_dir))
        except SandboxError as e:
            errors.append(e)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for lease in got:
        lease.release()
    assert not errors and sorted(lease.uid for lease in got) == list(range(base, base + 8))


@root_only
def test_a_released_lease_never_kills_the_next_holders_processes(tmp_path: Path) -> None:
    """Release once: a second release, or a late kill (the browser's watchdog), after the uid went
    to another sandbox must leave that sandbox alone."""
    lock_dir, base = tmp_path, 64200
    first = lease_uid(base, 1, lock_dir)
    first.release()
    second = lease_uid(base, 1, lock_dir)
    victim = subprocess.Popen(["setpriv", f"--reuid={base}", f"--regid={base}", "--clear-groups", "--", "sleep", "60"])
    _wait_for_uid(victim.pid, base)  # until then it runs as root, and no kill of the uid would find it
    try:
        first.kill_processes()
        first.release()
        assert victim.poll() is None, "a released lease killed the next holder's process"
        second.release()
        assert victim.wait(timeout=10) == -9  # the holder's release does kill what its uid left
    finally:
        victim.kill()
        second.release()


def _wait_for_uid(pid: int, uid: int, timeout_s: float = 30.0) -> None:
    """Wait until process `pid` has switched its real uid to `uid` (setpriv does it before exec;
    on a loaded box that can take a while after Popen returns)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not switch to uid {uid} within {timeout_s:g} s")


# --- the browser ---------------------------------------------------------------------------------


def _browser_available() -> bool:
    from rewards.browser import CHROMIUM

    return sandbox.available_isolation() == "bwrap" and os.access(CHROMIUM, os.X_OK)


needs_browser = pytest.mark.skipif(not _browser_available(), reason="needs bubblewrap and Debian's chromium")


@needs_browser
def test_a_browser_that_cannot_launch_raises_sandbox_error() -> None:
    from rewards.browser import Browser, BrowserLimits

    with pytest.raises(SandboxError, match="Chromium's sandbox did not start"):
        Browser(BrowserLimits(memory_mb=1))


@needs_browser
@root_only
def test_the_browser_releases_its_uid_once_and_only_at_shutdown() -> None:
    from rewards.browser import Browser

    browser = Browser()
    try:
        uid = browser.uid
        assert uid is not None
        browser._kill_sandbox()  # what the watchdog does: kills, but the uid stays the browser's
        with pytest.raises(SandboxError):
            lease_uid(uid, 1)
        browser._shutdown_browser()
        other = lease_uid(uid, 1)  # free now: another sandbox takes it
        victim = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "sleep", "60"])
        try:
            browser._kill_sandbox()  # a watchdog firing late
            assert victim.poll() is None, "the browser killed a process of a uid it no longer holds"
        finally:
            victim.kill()
            victim.wait(timeout=10)
            other.release()
        assert browser.render("<h1>again</h1>", [{"type": "text", "selector": "h1", "expect": "again"}]).checks_passed == 1
    finally:
        browser.close()


# --- as a non-root user --------------------------------------------------------------------------


def _run_as_nobody(script: str, work: Path, timeout_s: float) -> dict[str, Any]:
    """Run `script` with this interpreter as uid 65534 with `FLOOD_THREADS` threads of it already
    running; returns the JSON object it prints last."""
    work.chmod(0o777)
    prefix = Path(sys.base_prefix).resolve()
    hidden = next((p for p in [*reversed(prefix.parents), prefix] if not os.stat(p).st_mode & 0o001), None)
    shell = ""
    if hidden is not None:  # the interpreter is not reachable by other uids: expose it in a mount namespace
        stash = work / "prefix"
        stash.mkdir()
        shell = (f"mount --bind {prefix} {stash} && mount -t tmpfs -o mode=755 tmpfs {hidden} && "
                 f"mkdir -p {prefix} && mount --bind {stash} {prefix} && ")
    flood = (f"import threading\n_stop = threading.Event()\n"
             f"for _ in range({FLOOD_THREADS}): threading.Thread(target=_stop.wait, daemon=True).start()\n")
    (work / "script.py").write_text(flood + textwrap.dedent(script))
    (work / "script.py").chmod(0o644)
    shell += (f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- env -i PATH=/usr/bin:/bin "
              f"HOME={work} TMPDIR={work} PYTHONPATH={REPO} {sys.executable} {work / 'script.py'}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", shell], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return json.loads(lines[-1])


@needs_sandbox
@root_only
def test_the_code_reward_pool_runs_as_a_non_root_user_with_many_threads() -> None:
    """As uid 65534, whose Ray and flood threads far exceed the sandbox's 32 processes, the pool's
    code reward scores right (the process limit counts the sandbox alone) and nothing fails."""
    work = Path(tempfile.mkdtemp(prefix="ling-nobody-", dir="/tmp"))  # Ray's socket paths stay short
    try:
        result = _run_as_nobody("""
            import json, os
            from ling_rl.cluster.config import ClusterConfig
            from ling_rl.cluster.ray_init import init_ray
            from ling_rl.reward.config import RewardSpec
            from ling_rl.reward.pool import RewardPool
            from ling_rl.types import Rollout, Sample
            from rewards.code import run_tests
            from rewards.sandbox import SandboxLimits

            assert os.getuid() == 65534
            direct = run_tests("def f():\\n    return 1", ["assert f() == 1"], SandboxLimits(timeout_s=5)).passed
            init_ray(ClusterConfig(num_cpus=2, object_store_gib=0.5), temp_dir=os.environ["TMPDIR"] + "/ray")
            sample = Sample(id="s", prompt="write f", prompt_ids=[1], columns={"tests": ["assert f() == 1"]})
            rollouts = [Rollout(sample=sample, group=0, response_ids=[3], response_text=text, inf_logprobs=[0.0],
                                finish_reason="stop", policy_version=0)
                        for text in ["def f():\\n    return 1", "def f():\\n    return 2"]]
            spec = RewardSpec(name="code", args={"timeout_s": 5.0, "max_parallel": 1}, timeout_s=60)
            with RewardPool([spec], num_workers=1, worker_cpus=0.25, start_timeout_s=120) as pool:
                scored, metrics = pool.score(rollouts)
            code = metrics.plugins["code"]
            print(json.dumps({"direct": direct, "scores": [s.breakdown["code"] for s in scored],
                              "failures": code.failures, "errors": code.errors}))
        """, work, timeout_s=240)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    assert result == {"direct": [True], "scores": [1.0, 0.0], "failures": 0, "errors": []}


@needs_browser
@root_only
def test_the_browser_runs_as_a_non_root_user_with_many_threads() -> None:
    """As uid 65534 with more threads than the browser's process limit (512) already running."""
    work = Path(tempfile.mkdtemp(prefix="ling-nobody-", dir="/tmp"))
    try:
        result = _run_as_nobody("""
            import json, threading
            from rewards.browser import Browser, BrowserLimits

            for _ in range(600):
                threading.Thread(target=_stop.wait, daemon=True).start()
            browser = Browser(BrowserLimits())
            try:
                page = browser.render("<h1>hello</h1>", [{"type": "text", "selector": "h1", "expect": "hello"}])
            finally:
                browser.close()
            print(json.dumps({"loaded": page.loaded, "passed": page.checks_passed, "error": page.error}))
        """, work, timeout_s=180)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    assert result == {"loaded": True, "passed": 1, "error": None}
