"""Process lifecycle of a run: no orphans after the driver is SIGKILLed, Ctrl-C saves and resumes,
the local Ray starts without its dashboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from ling_rl.driver.interrupt import Interrupted, StopRequest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"
ORPHAN_LIMIT_S = 30


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _alive(procs: list[psutil.Process], session_dirs: set[str]) -> list[str]:
    """The recorded processes still running, plus any process naming one of the Ray session folders."""
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    pids = {p.pid for p in alive}
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if p.pid not in pids and any(d in line for d in session_dirs) and p.pid != os.getpid():
            alive.append(p)
    return [f"{p.pid}: {' '.join(p.cmdline())[:150]}" for p in alive if _running(p)]


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _session_dirs(procs: list[psutil.Process]) -> set[str]:
    found = set()
    for p in procs:
        try:
            found |= {a.split("=", 1)[1] for a in p.cmdline() if a.startswith(("--session_dir=", "--session-dir="))}
        except psutil.Error:
            pass
    return found


def _wait_gone(procs: list[psutil.Process], session_dirs: set[str]) -> list[str]:
    deadline = time.monotonic() + ORPHAN_LIMIT_S
    while (alive := _alive(procs, session_dirs)) and time.monotonic() < deadline:
        time.sleep(1)
    return alive


# --- the watchdog, without Ray --------------------------------------------------------------------

_DRIVER = """
import subprocess, sys, time
from ling_rl.cluster.reaper import start_reaper
reaper = start_reaper()
# A child in its own session, and a grandchild in its own session whose parent exits after 1.5 s,
# so that it is reparented to init while the driver still lives (like Ray's agents once the raylet
# is gone): neither dies with the driver by itself.
subprocess.Popen(["sleep", "300"], start_new_session=True)
middle = subprocess.Popen([sys.executable, "-c", "import subprocess, time; "
                           "subprocess.Popen(['sleep', '301'], start_new_session=True); time.sleep(1.5)"])
middle.wait()
print("ready", flush=True)
time.sleep(300)
"""


def test_reaper_kills_the_tree_of_a_sigkilled_driver() -> None:
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "ready"
        procs = _tree(driver.pid)
        orphan = [p for p in psutil.process_iter(["cmdline", "create_time"])
                  if p.info["cmdline"] == ["sleep", "301"] and p.info["create_time"] >= procs[0].create_time()]
        assert len(procs) == 3 and len(orphan) == 1 and orphan[0].ppid() != driver.pid, (procs, orphan)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert _wait_gone(procs[1:] + orphan, set()) == []
    finally:
        if driver.poll() is None:
            driver.kill()


def test_stop_request_records_the_first_signal_and_raises_on_the_second() -> None:
    stop = StopRequest.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        err = stop.interrupted(3, Path("run/checkpoints/step-000003"))
        assert isinstance(err, Interrupted) and err.exit_code == 143
        assert str(err) == ("interrupted at step 3; saved checkpoint run/checkpoints/step-000003; "
                            "rerun the same command to resume")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


# --- a whole run: Ctrl-C, resume, SIGKILL ------------------------------------------------------------


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_rows(run_dir: Path, proc: subprocess.Popen, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(_rows(run_dir)) < n:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"{n} metrics rows did not appear within {timeout}s"
        time.sleep(0.5)


@pytest.mark.vllm
def test_ctrl_c_saves_the_last_step_resumes_and_sigkill_leaves_no_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ling_rl.commands.cli", "train", str(RECIPE), f"run.output_dir={tmp_path}", "run.name=run",
            "run.steps=30", "checkpoint.every=0", "checkpoint.export_hf=false", "tracking.progress_bar=false",
            "rollout.prompts_per_step=4", "rollout.group_size=4", "learner.num_ranks=1", "cluster.num_cpus=3"]
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")

    # Ctrl-C in a terminal signals the whole foreground process group, the driver's children too.
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _wait_rows(run_dir, proc, 1)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    done = len(_rows(run_dir))
    ckpt = run_dir / "checkpoints" / f"step-{done:06d}"
    assert proc.returncode == 130, out[-4000:]
    assert f"interrupted at step {done}; saved checkpoint {ckpt}; rerun the same command to resume" in out, out[-4000:]
    assert (ckpt / "driver_state.json").is_file()

    # The same command resumes after the saved step; then the driver is SIGKILLed.
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _wait_rows(run_dir, proc, done + 1)
    assert _rows(run_dir)[done]["step"] == done
    procs = _tree(proc.pid)
    session_dirs = _session_dirs(procs)
    assert len(session_dirs) == 1 and len(procs) > 8, [p.cmdline() for p in procs]
    _assert_no_dashboard(procs, Path(next(iter(session_dirs))))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert _wait_gone(procs[1:], session_dirs) == []


def test_ctrl_c_during_dft_stops_after_the_dft_step_in_flight(tmp_path: Path) -> None:
    """Not after all of `dft.steps` (the DFT loop checks the stop request as the RL loop does)."""
    args = [sys.executable, "-m", "ling_rl.commands.cli", "train", str(ROOT / "recipes" / "quickstart.yaml"),
            f"run.output_dir={tmp_path}", "run.name=run", "dft.steps=100000", "dft.batch_size=4", "eval.every=0",
            "checkpoint.every=0", "checkpoint.export_hf=false", "tracking.progress_bar=false", "learner.num_ranks=1",
            "cluster.num_cpus=3", "tracking.wandb.enabled=false"]
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    assert proc.stdout is not None
    watchdog = threading.Timer(600, proc.kill)  # the read below ends at EOF; a hung start-up is killed
    watchdog.start()
    for line in proc.stdout:  # the DFT's first line comes after start-up
        seen.append(line)
        if line.startswith("dft 1/100000"):
            break
    assert seen and seen[-1].startswith("dft 1/100000"), "".join(seen)[-4000:]
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)  # 100000 DFT steps would take hours
    watchdog.cancel()
    out = "".join(seen) + out
    assert proc.returncode == 130, out[-4000:]
    assert "interrupted in DFT step " in out and "/100000, before RL step 0; no step completed, nothing saved" in out, \
        out[-4000:]
    assert _rows(tmp_path / "run") == []


def _assert_no_dashboard(procs: list[psutil.Process], session_dir: Path) -> None:
    """`cluster.dashboard: false` (the default). Ray 2.60 always starts its API server process and,
    from the raylet, the DashboardAgent and RuntimeEnvAgent (the raylet requires both); without the
    dashboard the API server loads only the usage-stats module and serves no web UI, and the agent
    collects and exports no metrics (it records the metrics export port as -1)."""
    heads = [" ".join(p.cmdline()) for p in procs if "dashboard/dashboard.py" in " ".join(p.cmdline())]
    assert len(heads) == 1 and "--modules-to-load=UsageStatsHead" in heads[0] and "--disable-frontend" in heads[0]
    ports = list(session_dir.glob("metrics_export_port_*"))
    assert [p.read_text().strip() for p in ports] == ["-1"], ports
