"""Run untrusted Python (model-written code) in a sandbox, and nothing but that.

Each run gets a fresh temp folder with the files, bound read-only at /code, and this command line
(the one that contained every hostile case tried, see the environment notes):

    timeout -s KILL T  prlimit --cpu --as --fsize --core=0 --                    limits, set from outside
      setpriv --reuid=U --regid=U --clear-groups --no-new-privs --               as root: a leased uid
      bwrap --unshare-all --die-with-parent --new-session                      own user namespace, no
            --ro-bind /usr /usr (+ /lib, /bin symlinks) --proc /proc --dev /dev  network, own pids
            --tmpfs /tmp (size-capped) --ro-bind FOLDER /code --chdir /tmp
      prlimit --nproc=N --                                                     process limit, inside
      /usr/bin/python3 -I -c LAUNCHER      reports "started" on a pipe, then runs /code/main.py

Why each part: bubblewrap run as root is not a sandbox by itself (full capabilities inside), so
root first drops to a throw-away uid; RLIMIT_NPROC is ignored for root; rlimits do not block the
network, the network namespace does; killing bwrap (the timeout) kills the sandbox's pid namespace
with it, detached children included, so nothing outlives the run or holds its output (and, as that
teardown is asynchronous, a run as root ends by killing any process left with its uid).

The process limit is set inside bubblewrap's user namespace, not outside: RLIMIT_NPROC counts the
processes and threads of the real uid, and since Linux 5.14 it counts them per user namespace, so
set inside it counts only the sandbox's own processes. Set outside, it would count every thread the
uid already runs: as a non-root user that is the reward worker's own uid, whose Ray, torch and vLLM
threads exceed 32, and bubblewrap could not even fork its namespace.

The uid (as root) is leased: a lock file per uid under `UID_LOCK_DIR`, flock-ed for the sandbox's
life, so no two sandboxes of any process on the host share a uid (the end-of-run sweep kills every
process of the uid, so a shared uid would kill another run's sandbox), and a holder that crashes
frees its uids with its file descriptors. A lease is released once; the sweep runs only while held.

A sandbox that does not start (bubblewrap cannot fork or mount, no uid free, the interpreter cannot
load) raises `SandboxError`, an infrastructure failure, never a failed program: the launcher writes
to a pipe the program never sees before the program's first line runs, and a run without that
write did not start. The program's stdout and stderr go to files in the run's folder (outside the
sandbox), bounded by the file-size limit, so a chatty program cannot exhaust the caller's memory.

Without bubblewrap the fallback (root only) is the same limits and uid under `unshare --net --pid
--mount --ipc --fork --kill-child`, with the world-writable folders (/tmp, /var/tmp, /dev/shm,
/run/lock) masked by empty tmpfs mounts and the fresh folder as the working directory: no network,
own pids, no writes outside, but the files the uid may read (world-readable ones) stay visible.
With neither available `run_python` raises `SandboxUnavailable`: code is never run unsandboxed.
The project's `scripts/setup.sh` installs bubblewrap.
"""

from __future__ import annotations

import fcntl
import math
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ling_rl.reward.contract import InfrastructureError

SANDBOX_PYTHON = "/usr/bin/python3"
"""The sandboxed interpreter: the system one, readable by any uid (not a venv under /root)."""

SANDBOX_UID_BASE = 60000
SANDBOX_UID_COUNT = 5000
"""Runs as root use a leased uid in [BASE, BASE + COUNT), one that owns no files on the host."""

UID_LOCK_DIR = Path("/tmp/ling-sandbox-uids")
"""One lock file per leased uid. A fixed path, not $TMPDIR: every process on the host (each reward
worker) must see the same locks."""

TEMP_PREFIX = "ling-sandbox-"

OUTPUT_READ_LIMIT = 1 << 20
"""Bytes of stdout/stderr read back (the file-size limit bounds what can be written)."""


class SandboxUnavailable(InfrastructureError):
    """Neither bubblewrap nor the unshare fallback can run here; the message says why and what to install."""


class SandboxError(InfrastructureError):
    """A sandbox did not start (the program never ran): an infrastructure failure, not a score."""


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
    return _probe()[0]


def unavailable_reason() -> str:
    """Why no sandbox works here (one clause per kind tried); empty when one does."""
    return _probe()[1]


@lru_cache(maxsize=1)
def _probe() -> tuple[str | None, str]:
    # Probed by running a trivial program, not by looking for binaries: bwrap can be installed yet
    # unusable (no user namespaces in a container), and the fallback needs root for unshare.
    reasons = []
    for isolation in ("bwrap", "unshare"):
        missing = _missing_tools(isolation)
        if missing:
            reasons.append(f"{isolation}: {missing}")
            continue
        try:
            result = run_python({"main.py": "print('ok')"}, SandboxLimits(timeout_s=10), isolation=isolation)
        except (InfrastructureError, OSError) as e:
            reasons.append(f"{isolation}: {e}")
            continue
        if result.returncode == 0 and result.stdout.strip() == "ok":
            return isolation, ""
        reasons.append(f"{isolation}: the probe exited {result.returncode} with stderr {_last_line(result.stderr)!r}")
    return None, "; ".join(reasons)


def _missing_tools(isolation: str) -> str:
    """What the isolation lacks here (empty: nothing)."""
    if isolation == "unshare" and os.geteuid() != 0:
        return "needs root (unshare --net)"
    needed = ["timeout", "prlimit", "bwrap" if isolation == "bwrap" else "unshare"]
    if os.geteuid() == 0:
        needed.append("setpriv")
    missing = [tool for tool in needed if not shutil.which(tool)]
    if not os.access(SANDBOX_PYTHON, os.X_OK):
        missing.append(SANDBOX_PYTHON)
    return f"{', '.join(missing)} not found" if missing else ""


def run_python(files: dict[str, str], limits: SandboxLimits, *, stdin: str = "", isolation: str | None = None) -> SandboxResult:
    """Run `/code/main.py` of `files` (name -> text, flat) in the sandbox; `isolation` forces one.

    The program sees its files read-only under /code, works in a private /tmp, gets `stdin`, and
    reports through stdout. The host's temp folder of the run is removed before returning. Raises
    `SandboxUnavailable` when no sandbox works here, `SandboxError` when this run's sandbox did not
    start (both infrastructure failures: the program never ran).
    """
    if "main.py" not in files or any("/" in name or name.startswith(".") for name in files):
        raise ValueError("files must be flat names and include main.py")
    isolation = isolation or available_isolation()
    if isolation is None:
        raise SandboxUnavailable(
            f"no sandbox for model code ({unavailable_reason()}): install bubblewrap (`apt-get install -y "
            f"bubblewrap`, done by scripts/setup.sh) and make sure {SANDBOX_PYTHON} exists; as non-root, "
            "bubblewrap must be able to create user namespaces"
        )
    run_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    lease = None
    try:
        lease = lease_uid() if os.geteuid() == 0 else None
        return _run(run_dir, files, limits, stdin, isolation, lease.uid if lease is not None else os.geteuid())
    finally:
        if lease is not None:
            # Killing bwrap tears its pid namespace down asynchronously: a fork bomb's processes
            # may still run a moment later. They all carry this run's uid: the release kills them.
            lease.release()
        shutil.rmtree(run_dir, ignore_errors=True)


def _run(run_dir: Path, files: dict[str, str], limits: SandboxLimits, stdin: str, isolation: str, uid: int) -> SandboxResult:
    # bwrap: the code folder is bound read-only at /code. Fallback: the program runs in the folder
    # itself (owned by the sandbox uid), as /tmp is masked by an empty tmpfs there.
    code_dir = run_dir / "code"
    code_dir.mkdir()
    for name, text in files.items():
        (code_dir / name).write_text(text)
        (code_dir / name).chmod(0o644)
    run_dir.chmod(0o755)  # the sandbox uid must reach the code
    code_dir.chmod(0o755)
    if isolation == "unshare" and os.geteuid() == 0:
        os.chown(code_dir, uid, uid)
    stdout_path, stderr_path = run_dir / "stdout", run_dir / "stderr"
    started_r, started_w = os.pipe()
    start = time.monotonic()
    try:
        command = _command(isolation, limits, uid, code_dir, started_w)
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            # A new session, so that the backstop below can kill everything this run started.
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                                    cwd=code_dir, env=_SANDBOX_ENV, pass_fds=(started_w,))
            os.close(started_w)
            started_w = -1
            try:
                proc.communicate(stdin.encode(), timeout=limits.timeout_s + 5.0)
            except subprocess.TimeoutExpired:
                # `timeout -s KILL` should have fired long ago; do not trust it to, kill the session.
                _kill_session(proc.pid)
                proc.wait()
            _kill_session(proc.pid)  # nothing of this run may outlive it
        started = _was_written(started_r)
    finally:
        os.close(started_r)
        if started_w != -1:
            os.close(started_w)
    elapsed = time.monotonic() - start
    code = proc.returncode
    stderr = _read(stderr_path)
    if not started:
        raise SandboxError(f"the {isolation} sandbox did not start (exit status {code}): {_last_line(stderr) or 'no message'}")
    # `timeout` exits 137 (128 + SIGKILL) when it killed the program on time.
    timed_out = code in (-9, 137) and elapsed >= limits.timeout_s
    return SandboxResult(code, _read(stdout_path), stderr, timed_out, elapsed, isolation)


def _was_written(fd: int) -> bool:
    """Whether the launcher wrote to the pipe (read without waiting: a leftover process of a torn
    down sandbox may still hold its write end)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 16) == _STARTED
    except BlockingIOError:
        return False


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


_STARTED = b"started"


def _launcher(fd: int, main: str | None) -> str:
    """The sandboxed interpreter's first code: tell the caller the sandbox started (on a pipe the
    program never sees: it is closed first), then run `main` as `python main` would; None: run
    ./main.py relative to the working directory (the fallback, whose cwd path is masked)."""
    started = f"import os, runpy; os.write({fd}, {_STARTED!r}); os.close({fd}); "
    if main is not None:
        return started + f"runpy.run_path({main!r}, run_name='__main__')"
    return started + "exec(compile(open('main.py').read(), 'main.py', 'exec'), {'__name__': '__main__'})"


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


def _command(isolation: str, limits: SandboxLimits, uid: int, code_dir: Path, started_fd: int) -> list[str]:
    cpu = math.ceil(limits.timeout_s)
    limit = [
        "timeout", "-s", "KILL", f"{limits.timeout_s:g}",
        "prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={limits.memory_mb << 20}",
        f"--fsize={limits.max_file_mb << 20}", "--core=0", "--",
    ]  # fmt: skip
    nproc = ["prlimit", f"--nproc={limits.max_processes}", "--"]
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"] if os.geteuid() == 0 else []
    if isolation == "bwrap":
        # The process limit inside bubblewrap's user namespace: it counts the sandbox's processes only.
        return limit + drop + [
            "bwrap", "--unshare-all", "--die-with-parent", "--new-session", *BWRAP_SYSTEM,
            "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp",
            "--ro-bind", str(code_dir), "/code", "--chdir", "/tmp",
            *nproc, SANDBOX_PYTHON, "-I", "-c", _launcher(started_fd, "/code/main.py"),
        ]  # fmt: skip
    # unshare (root) makes the namespaces and masks the writable folders; then drop to the uid (a
    # leased one, which runs nothing else, so the process limit counts this run alone). The working
    # directory (the code folder, opened before the masking) stays reachable as ".": Python resolves
    # a script path against the cwd's *path*, which the /tmp mask hides, so main.py is run relative.
    masks = " ".join(f"if [ -d {d} ]; then mount -t tmpfs -o size={limits.tmp_mb}m tmpfs {d} || exit 99; fi;" for d in _MASKED_DIRS)
    script = f'{masks} exec "$@"'
    return limit + nproc + [
        "unshare", "--net", "--pid", "--mount", "--ipc", "--fork", "--kill-child", "--",
        "/bin/sh", "-c", script, "sh", *drop, SANDBOX_PYTHON, "-I", "-c", _launcher(started_fd, None),
    ]  # fmt: skip


class UidLease:
    """A sandbox uid held by this process (as root), from `lease_uid` until `release`: an flock on
    its lock file, which the kernel drops if the process dies. Thread-safe: a watchdog thread may
    call `kill_processes` while another releases."""

    def __init__(self, uid: int, lock_fd: int) -> None:
        self.uid = uid
        self._fd: int | None = lock_fd
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def kill_processes(self) -> None:
        """SIGKILL every process of the uid while it is held; nothing once released (the uid may
        be another sandbox's by then)."""
        with self._lock:
            if self._fd is not None:
                _kill_uid(self.uid)

    def release(self) -> None:
        """Kill what is left of the sandbox, then free the uid. Only the first call does anything."""
        with self._lock:
            if self._fd is None:
                return
            try:
                _kill_uid(self.uid)
            finally:
                os.close(self._fd)  # drops the flock
                self._fd = None


def lease_uid(base: int = SANDBOX_UID_BASE, count: int = SANDBOX_UID_COUNT, lock_dir: Path = UID_LOCK_DIR) -> UidLease:
    """Lease a uid in [base, base + count) that no other sandbox on the host holds (as root).

    flock, not fcntl record locks: a record lock belongs to the process, so two threads of one
    worker would both get it; an flock belongs to the open file, so each lease excludes every other.
    Raises `SandboxError` when every uid is held or the lock folder is unsafe."""
    _check_lock_dir(lock_dir)
    first = secrets.randbelow(count)  # a random start: concurrent leases rarely probe the same files
    for k in range(count):
        uid = base + (first + k) % count
        fd = os.open(lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        lease = UidLease(uid, fd)
        lease.kill_processes()  # a holder that crashed may have left processes of this uid
        return lease
    raise SandboxError(f"all {count} sandbox uids {base}-{base + count - 1} are in use (lock files in {lock_dir})")


def _check_lock_dir(lock_dir: Path) -> None:
    try:
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(lock_dir)
    except OSError as e:
        raise SandboxError(f"cannot create the sandbox uid lock folder {lock_dir}: {e}") from e
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise SandboxError(
            f"{lock_dir} must be a folder (not a link) owned by uid {os.geteuid()} and writable by no one else: "
            "another user could otherwise hold or forge the sandbox uid locks"
        )


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

