"""Watchdog that kills a run's processes when its driver dies, even by SIGKILL.

    python -m ling_rl.cluster.reaper --parent PID     # started by `start_reaper()`, own session

A local Ray, its vLLM engine cores, learner ranks, reward workers and browsers are all descendants
of the driver while it lives. When the driver is SIGKILLed they reparent to init and some of them
(Ray's agents, an engine core) linger for tens of seconds or for good. Linux `PR_SET_PDEATHSIG` is
per process and not inherited by grandchildren, so it cannot cover them. This process therefore
records the driver's whole process tree every `POLL_S` seconds while the driver lives, plus every
process whose command line names one of the Ray session folders seen in that tree (a worker that
Ray starts during the kill), and when the driver is gone (EOF on stdin, or a new parent pid) it
sends SIGTERM to all of them, then SIGKILL to those left after `GRACE_S` seconds, then removes
the files the driver asked it to (`remove_after_driver`: the `shm_file` weight sync's buckets in
/dev/shm, up to a whole model, which a killed driver can no longer remove), and exits.

The driver talks to it through the stdin pipe: EOF means the driver is gone, each line is a JSON
request `{"folder": ..., "pattern": ...}` (remove the files in `folder` whose names match the
regular expression `pattern` in full).

It only ever signals processes it saw in the driver's tree or that name the run's own Ray session
folder: never by name, so other runs and other Ray instances on the machine are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
"""How often the driver's process tree is recorded."""

GRACE_S = 3.0
"""Seconds between SIGTERM and SIGKILL."""

_SESSION_ARG = re.compile(r"^--session[-_]dir=(.+)$")


class Tracker:
    """The processes seen in the driver's tree, and the Ray session folders they name."""

    def __init__(self, parent: psutil.Process) -> None:
        self.parent = parent
        self.seen: dict[int, psutil.Process] = {}
        self.session_dirs: set[str] = set()

    def record(self) -> None:
        try:
            children = self.parent.children(recursive=True)
        except psutil.Error:
            return
        for proc in children:
            if proc.pid == os.getpid() or proc.pid in self.seen:
                continue
            self.seen[proc.pid] = proc
            self.session_dirs |= _session_dirs(proc)
        # Drop the exited ones so a recycled pid is never mistaken for a run process.
        self.seen = {pid: p for pid, p in self.seen.items() if p.is_running()}

    def survivors(self) -> list[psutil.Process]:
        """Recorded processes still running, plus any naming the run's Ray session folders."""
        alive = {pid: p for pid, p in self.seen.items() if p.is_running()}
        if self.session_dirs:
            for proc in psutil.process_iter(["cmdline"]):
                if proc.pid != os.getpid() and proc.pid not in alive and _names_any(proc, self.session_dirs):
                    alive[proc.pid] = proc
        return list(alive.values())


def _session_dirs(proc: psutil.Process) -> set[str]:
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return set()
    return {m.group(1) for arg in cmdline if (m := _SESSION_ARG.match(arg))}


def _names_any(proc: psutil.Process, folders: set[str]) -> bool:
    cmdline = " ".join(proc.info.get("cmdline") or [])
    return any(folder in cmdline for folder in folders)


def kill_all(tracker: Tracker, grace_s: float = GRACE_S) -> None:
    """SIGTERM every survivor, SIGKILL what is left after `grace_s`; repeat for processes Ray
    starts meanwhile (bounded: a few rounds)."""
    for _ in range(5):
        procs = tracker.survivors()
        if not procs:
            return
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=grace_s)


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)  # psutil checks the pid still names the same process
    except psutil.Error:
        pass


class Inbox:
    """The driver's requests, read from stdin: which files to remove once it is gone."""

    def __init__(self) -> None:
        self.pending = b""
        self.removals: list[tuple[str, str]] = []
        """(folder, name pattern) pairs, in the order the driver sent them."""

    def feed(self, data: bytes) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                self.removals.append((str(request["folder"]), re.compile(str(request["pattern"])).pattern))
            except (ValueError, KeyError, TypeError, re.error) as e:  # a bad request must not stop the watchdog
                print(f"ling_rl.cluster.reaper: ignored request {line[:200]!r}: {e}", file=sys.stderr, flush=True)

    def remove_files(self) -> list[str]:
        """Remove the requested files that exist; returns their paths."""
        return [path for folder, pattern in self.removals for path in remove_matching(folder, pattern)]


def remove_matching(folder: str, pattern: str) -> list[str]:
    """Remove the files (never folders or what a link points to) in `folder` whose names match the
    regular expression `pattern` in full; returns their paths. A missing folder has none."""
    names, removed = re.compile(pattern), []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        if names.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except FileNotFoundError:  # removed meanwhile (the driver's own cleanup)
                pass
    return removed


def driver_gone(parent_pid: int, timeout: float, inbox: Inbox | None = None) -> bool:
    """Waits up to `timeout` for EOF on stdin (the driver holds the pipe's other end); what the
    driver wrote meanwhile goes to `inbox`."""
    if os.getppid() != parent_pid:
        return True
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if ready:
        data = os.read(sys.stdin.fileno(), 65536)
        if not data:
            return True
        if inbox is not None:
            inbox.feed(data)
    return os.getppid() != parent_pid


def drain(inbox: Inbox, timeout: float = 1.0) -> None:
    """Read the driver's requests not read yet, up to EOF (at most `timeout` seconds: a process
    that inherited the pipe may keep it open)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        data = os.read(sys.stdin.fileno(), 65536) if ready else b""
        if not data:
            return
        inbox.feed(data)


def watch(parent_pid: int) -> None:
    # The terminal's Ctrl-C and the driver's own SIGTERM are the driver's business: this process
    # must outlive the driver to clean up after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inbox = Inbox()
    try:
        tracker: Tracker | None = Tracker(psutil.Process(parent_pid))
    except psutil.Error:  # the driver died before this process started: it has no tree to kill
        tracker = None
    if tracker is not None:
        while True:
            tracker.record()
            if driver_gone(parent_pid, POLL_S, inbox):
                break
        kill_all(tracker)
    drain(inbox)
    inbox.remove_files()  # after the kill: no learner rank is left to write a new bucket


def start_reaper() -> subprocess.Popen:
    """Start the watchdog of this process (the driver). Keep the returned handle alive: its stdin
    pipe closes when this process exits, however it exits."""
    return subprocess.Popen([sys.executable, "-m", "ling_rl.cluster.reaper", "--parent", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)


def remove_after_driver(reaper: subprocess.Popen, folder: str, pattern: str) -> None:
    """Ask the watchdog `reaper` (from `start_reaper`) to remove the files in `folder` whose names
    match `pattern` (a regular expression, matched in full) once this process is gone."""
    assert reaper.stdin is not None
    reaper.stdin.write((json.dumps({"folder": folder, "pattern": pattern}) + "\n").encode())
    reaper.stdin.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=int, required=True, help="pid of the driver to watch")
    watch(parser.parse_args().parent)


if __name__ == "__main__":
    main()
