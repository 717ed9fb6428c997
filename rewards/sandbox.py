"""Run untrusted Python (model-written code) in a sandbox, and nothing but that.

Each run gets a fresh temp folder with the files, bound read-only at /code, and this command line
(the one that contained every hostile case tried, see the environment notes):

    timeout -s KILL T  prlimit --cpu --as --fsize --nproc --core=0 --            limits, set from outside
      setpriv --reuid=U --regid=U --clear-groups --no-new-privs --               an unprivileged uid
      bwrap --unshare-all --die-with-parent --new-session                      no network, own pids
            --ro-bind /usr /usr (+ /lib, /bin symlinks) --proc /proc --dev /dev
            --tmpfs /tmp (size-capped) --ro-bind FOLDER /code --chdir /tmp
      /usr/bin/python3 -I /code/main.py

Why each part: bubblewrap run as root is not a sandbox by itself (full capabilities inside), so
root first drops to a throw-away uid (a random one per run, so the per-uid process limit of one
run's fork bomb cannot starve another run); RLIMIT_NPROC is ignored for root; rlimits do not block
the network, the network namespace does; killing bwrap (the timeout) kills the sandbox's pid
namespace with it, detached children included, so nothing outlives the run or holds its output
(and, as that teardown is asynchronous, the run ends by killing any process left with its uid).
The program's stdout and stderr go to files in the run's folder (outside the sandbox), bounded by
the file-size limit, so a chatty program cannot exhaust the caller's memory.

Without bubblewrap the fallback (root only) is the same limits and uid under `unshare --net --pid
--mount --ipc --fork --kill-child`, with the world-writable folders (/tmp, /var/tmp, /dev/shm,
/run/lock) masked by empty tmpfs mounts and the fresh folder as the working directory: no network,
own pids, no writes outside, but the files the uid may read (world-readable ones) stay visible.
With neither available `run_python` raises `SandboxUnavailable`: code is never run unsandboxed.
The project's `scripts/setup.sh` installs bubblewrap.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SANDBOX_PYTHON = "/usr/bin/python3"
"""The sandboxed interpreter: the system one, readable by any uid (not a venv under /root)."""

SANDBOX_UID_BASE = 60000
SANDBOX_UID_COUNT = 5000
"""Runs as root use a random uid in [BASE, BASE + COUNT), one that owns no files on the host."""

TEMP_PREFIX = "ling-sandbox-"

OUTPUT_READ_LIMIT = 1 << 20
"""Bytes of stdout/stderr read back (the file-size limit bounds what can be written)."""


class SandboxUnavailable(RuntimeError):
    """Neither bubblewrap nor the unshare fallback can run here; the message says what to install."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0
    """Wall-clock limit of the whole run (the CPU-time limit is the same, rounded up)."""
    memory_mb: int = 512
    """Address-space limit per process (RLIMIT_AS)."""
    max_processes: int = 32
    """Processes of the sandbox uid (RLIMIT_NPROC): stops fork bombs."""
    max_file_mb: int = 10
    """Largest file a process may write (RLIMIT_FSIZE), stdout and stderr included."""
    tmp_mb: int = 64
    """Size of the sandbox's private /tmp (bubblewrap only)."""


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    """The program's exit status; negative: killed by that signal (-9 also on timeout)."""
    stdout: str
    stderr: str
    timed_out: bool
    elapsed_s: float
    isolation: str
    """`bwrap` or `unshare`."""


def available_isolation() -> str | None:
    """`bwrap` when bubblewrap works here, else `unshare` when the fallback does, else None."""
    return _probe()


@lru_cache(maxsize=1)
def _probe() -> str | None:
    # Probed by running a trivial program, not by looking for binaries: bwrap can be installed yet
    # unusable (no user namespaces in a container), and the fallback needs root for unshare.
    for isolation in ("bwrap", "unshare"):
        if not _tools_present(isolation):
            continue
        try:
            result = run_python({"main.py": "print('ok')"}, SandboxLimits(timeout_s=10), isolation=isolation)
        except (SandboxUnavailable, OSError):
            continue
        if result.returncode == 0 and result.stdout.strip() == "ok":
            return isolation
    return None


def _tools_present(isolation: str) -> bool:
    needed = ["timeout", "prlimit", "bwrap" if isolation == "bwrap" else "unshare"]
    if os.geteuid() == 0:
        needed.append("setpriv")
    elif isolation == "unshare":
        return False  # unshare --net needs root (or user namespaces we would then be root inside)
    return all(shutil.which(tool) for tool in needed) and os.access(SANDBOX_PYTHON, os.X_OK)


def run_python(files: dict[str, str], limits: SandboxLimits, *, stdin: str = "", isolation: str | None = None) -> SandboxResult:
    """Run `/code/main.py` of `files` (name -> text, flat) in the sandbox; `isolation` forces one.

    The program sees its files read-only under /code, works in a private /tmp, gets `stdin`, and
    reports through stdout. The host's temp folder of the run is removed before returning.
    """
    if "main.py" not in files or any("/" in name or name.startswith(".") for name in files):
        raise ValueError("files must be flat names and include main.py")
    isolation = isolation or _probe()
    if isolation is None:
        raise SandboxUnavailable(
            "no sandbox for model code: install bubblewrap (`apt-get install -y bubblewrap`, done by "
            f"scripts/setup.sh) and make sure {SANDBOX_PYTHON} exists; as non-root, bubblewrap must be able "
            "to create user namespaces"
        )
    run_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        return _run(run_dir, files, limits, stdin, isolation)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run(run_dir: Path, files: dict[str, str], limits: SandboxLimits, stdin: str, isolation: str) -> SandboxResult:
    root = os.geteuid() == 0
    uid = fresh_uid() if root else os.geteuid()
    # bwrap: the code folder is bound read-only at /code. Fallback: the program runs in the folder
    # itself (owned by the sandbox uid), as /tmp is masked by an empty tmpfs there.
    code_dir = run_dir / "code"
    code_dir.mkdir()
    for name, text in files.items():
        (code_dir / name).write_text(text)
        (code_dir / name).chmod(0o644)
    run_dir.chmod(0o755)  # the sandbox uid must reach the code
    code_dir.chmod(0o755)
    if isolation == "unshare" and root:
        os.chown(code_dir, uid, uid)
    command = _command(isolation, limits, uid, code_dir)
    stdout_path, stderr_path = run_dir / "stdout", run_dir / "stderr"
    start = time.monotonic()
    try:
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            # A new session, so that the backstop below can kill everything this run started.
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                                    cwd=code_dir, env=_SANDBOX_ENV)
            try:
                proc.communicate(stdin.encode(), timeout=limits.timeout_s + 5.0)
            except subprocess.TimeoutExpired:
                # `timeout -s KILL` should have fired long ago; do not trust it to, kill the session.
                _kill_session(proc.pid)
                proc.wait()
            _kill_session(proc.pid)  # nothing of this run may outlive it
    finally:
        if root:
            # Killing bwrap tears its pid namespace down asynchronously: a fork bomb's processes
            # may still run a moment later. They all carry this run's uid: finish the job here.
            release_uid(uid)
    elapsed = time.monotonic() - start
    code = proc.returncode
    # `timeout` exits 137 (128 + SIGKILL) when it killed the program on time.
    timed_out = code in (-9, 137) and elapsed >= limits.timeout_s
    return SandboxResult(code, _read(stdout_path), _read(stderr_path), timed_out, elapsed, isolation)


_SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
"""The whole environment of the sandbox: nothing of the caller's (tokens, paths) leaks in."""

BWRAP_SYSTEM = [
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
    "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
]  # fmt: skip
"""bubblewrap arguments of the sandboxes' file system: the system's /usr read-only, its own /proc
and a minimal /dev; nothing else of the host (no /etc, /root, /home, /tmp). Also used by the
front-end rewards' Chromium (rewards/browser.py)."""

_MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""World-writable host folders the fallback hides behind empty tmpfs mounts (its own mount namespace)."""


def _command(isolation: str, limits: SandboxLimits, uid: int, code_dir: Path) -> list[str]:
    cpu = math.ceil(limits.timeout_s)
    limit = [
        "timeout", "-s", "KILL", f"{limits.timeout_s:g}",
        "prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={limits.memory_mb << 20}",
        f"--fsize={limits.max_file_mb << 20}", f"--nproc={limits.max_processes}", "--core=0", "--",
    ]  # fmt: skip
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"] if os.geteuid() == 0 else []
    if isolation == "bwrap":
        return limit + drop + [
            "bwrap", "--unshare-all", "--die-with-parent", "--new-session", *BWRAP_SYSTEM,
            "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp",
            "--ro-bind", str(code_dir), "/code", "--chdir", "/tmp",
            SANDBOX_PYTHON, "-I", "/code/main.py",
        ]  # fmt: skip
    # unshare (root) makes the namespaces and masks the writable folders; then drop to the uid.
    # The working directory (the code folder, opened before the masking) stays reachable as ".".
    masks = " ".join(f"if [ -d {d} ]; then mount -t tmpfs -o size={limits.tmp_mb}m tmpfs {d} || exit 99; fi;" for d in _MASKED_DIRS)
    script = f'{masks} exec "$@"'
    return limit + [
        "unshare", "--net", "--pid", "--mount", "--ipc", "--fork", "--kill-child", "--",
        "/bin/sh", "-c", script, "sh", *drop, SANDBOX_PYTHON, "-I", "-c", _RUN_RELATIVE_MAIN,
    ]  # fmt: skip


# Python resolves a script path against the cwd's *path*, which the /tmp mask hides; reading the
# file relative to the open cwd still works.
_RUN_RELATIVE_MAIN = "src = open('main.py').read(); exec(compile(src, 'main.py', 'exec'), {'__name__': '__main__'})"


_RUN_UIDS: set[int] = set()
"""Uids of this process's runs in flight (runs go in threads; no two may share a uid)."""
_UID_LOCK = threading.Lock()


def fresh_uid() -> int:
    """A throw-away uid for one sandbox (as root); give it back with `release_uid`."""
    # Random, so runs in other processes (other reward workers) collide with odds 1 in COUNT.
    with _UID_LOCK:
        while True:
            uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_COUNT)
            if uid not in _RUN_UIDS:
                _RUN_UIDS.add(uid)
                return uid


def release_uid(uid: int) -> None:
    """Kill every process left with `uid` (a sandbox's), then let a later sandbox use it."""
    _kill_uid(uid)
    with _UID_LOCK:
        _RUN_UIDS.discard(uid)


def _kill_uid(uid: int, deadline_s: float = 5.0) -> None:
    """SIGKILL every live process whose real uid is `uid` until none is left (zombies are dead)."""
    end = time.monotonic() + deadline_s
    while True:
        pids = _live_pids_of(uid)
        if not pids or time.monotonic() > end:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _live_pids_of(uid: int) -> list[int]:
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # exited meanwhile
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(status.parent.name))
    return pids


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (the usual case)


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(OUTPUT_READ_LIMIT).decode("utf-8", errors="replace")

