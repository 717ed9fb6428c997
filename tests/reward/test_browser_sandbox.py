"""The front-end rewards' Chromium is a sandbox for model-written pages: it runs as an unprivileged
uid in its own network namespace (bubblewrap), sees no host files but the system's, and survives
hostile pages (loops, memory bombs, popup storms) within the per-page time limit.

Every case renders a real page in a real Chromium; one browser is shared across the module."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rewards.browser import CHROMIUM, close_browser, get_browser
from rewards.sandbox import available_isolation

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or available_isolation() != "bwrap",
                                reason="needs Debian chromium and bubblewrap (scripts/setup.sh)")


@pytest.fixture(autouse=True, scope="module")
def _close_browser_after_module():
    yield
    close_browser()


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, real uid, executable path) of every live, non-zombie process."""
    table = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            exe = os.readlink(status.parent / "exe")
        except OSError:
            continue
        if fields["State"].strip().startswith("Z"):
            continue
        table[int(status.parent.name)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]), exe)
    return table


def _descendants(root_pid: int) -> dict[int, tuple[int, str]]:
    """pid -> (uid, executable) of the processes below `root_pid`."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            stack.append(child)
            found[child] = table[child][1:]
    return found


def _chromium_descendants(root_pid: int) -> dict[int, int]:
    """pid -> uid of the Chromium processes below `root_pid`."""
    return {pid: uid for pid, (uid, exe) in _descendants(root_pid).items() if exe.startswith("/usr/lib/chromium/")}


def _alive_chromium(pids: list[int]) -> list[int]:
    table = _proc_table()
    return [pid for pid in pids if pid in table and table[pid][2].startswith("/usr/lib/chromium/")]


def _wait_gone(pids: list[int], within_s: float) -> list[int]:
    end = time.monotonic() + within_s
    while (alive := _alive_chromium(pids)) and time.monotonic() < end:
        time.sleep(0.2)
    return alive


def _still_usable() -> bool:
    return get_browser().render("<p>still alive</p>", [{"type": "text", "expect": "still alive"}],
                                timeout_s=10).checks[0].passed


def test_chromium_runs_unprivileged_in_its_own_network_namespace() -> None:
    assert _still_usable()
    procs = _chromium_descendants(os.getpid())
    assert procs, "no Chromium process found below the test process"
    assert all(uid != 0 for uid in procs.values()), procs
    my_net = os.readlink("/proc/self/ns/net")
    checked = 0
    for pid in procs:
        try:
            net, status = os.readlink(f"/proc/{pid}/ns/net"), Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue  # a short-lived helper process that exited meanwhile
        assert net != my_net and "NoNewPrivs:\t1" in status, (pid, status)
        checked += 1
    assert checked


class _Listener:
    """A TCP server on 127.0.0.1 that records every connection made to it (HTTP, WebSocket...)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(1.0)
            try:
                data = conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nAccess-Control-Allow-Origin: *\r\n\r\nok")
            except OSError:
                data = b""
            self.connections.append(data[:200])
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_pages_cannot_reach_a_loopback_server() -> None:
    """HTTP (fetch, XHR, <img>, form, beacon), WebSocket and WebRTC (STUN over UDP) to servers on
    the host's 127.0.0.1: none may arrive."""
    server = _Listener()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    datagrams: list[bytes] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                datagrams.append(udp.recv(2048))
            except OSError:  # timeout: look at `done` again
                pass

    threading.Thread(target=receive, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.port}"
        stun = f"stun:127.0.0.1:{udp.getsockname()[1]}"
        page = f"""<html><body><p id="out">start</p>
<img src="http://{host}/img.png"><img src="http://localhost:{server.port}/img2.png">
<form id="f" method="post" action="http://{host}/form"><input name="a" value="1"><button id="go">go</button></form>
<script>
fetch("http://{host}/fetch").catch(() => {{}});
fetch("http://localhost:{server.port}/fetch2", {{mode: "no-cors"}}).catch(() => {{}});
try {{ new WebSocket("ws://{host}/ws"); }} catch (e) {{}}
navigator.sendBeacon("http://{host}/beacon", "x");
const x = new XMLHttpRequest(); x.open("GET", "http://{host}/xhr"); x.send();
const pc = new RTCPeerConnection({{iceServers: [{{urls: "{stun}"}}]}});
pc.createDataChannel("d"); pc.createOffer().then(o => pc.setLocalDescription(o));
document.getElementById("out").textContent = "sent";
</script></body></html>"""
        result = get_browser().render(page, [{"type": "text", "selector": "#out", "expect": "sent"},
                                             {"type": "click", "selector": "#go"}], timeout_s=10)
        assert result.loaded and result.checks[0].passed, result  # the page's script did run
        time.sleep(1.5)  # let anything in flight arrive
        assert server.connections == [] and datagrams == []
    finally:
        done.set()
        server.close()


@pytest.mark.parametrize("target", ["/etc/passwd", "/etc/shadow", "ROOT_ONLY"])
def test_pages_cannot_read_host_files(target: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:TOPSECRET\n")
    secret.chmod(0o600)
    url = "file://" + (str(secret) if target == "ROOT_ONLY" else target)
    page = f"""<html><body><pre id="out">start</pre><iframe src="{url}"></iframe><a id="go" href="{url}">go</a>
<script>
const out = document.getElementById("out");
fetch("{url}").then(r => r.text()).then(t => {{ out.textContent += t; }}).catch(() => {{ out.textContent += " fetch-blocked"; }});
const x = new XMLHttpRequest();
try {{ x.open("GET", "{url}"); x.onload = () => {{ out.textContent += x.responseText; }}; x.send(); }} catch (e) {{}}
</script></body></html>"""
    result = get_browser().render(page, [{"type": "text", "selector": "#out", "expect": "fetch-blocked"},
                                         {"type": "click", "selector": "#go"},
                                         {"type": "text", "expect": "root:"}], timeout_s=10)
    assert result.loaded and result.checks[0].passed, result
    assert not result.checks[2].passed, result  # navigating the page to the file shows no content


def test_system_files_navigation_works_as_a_control() -> None:
    """The navigation used above does show a file the sandbox may read (so the test can fail)."""
    page = '<html><body><a id="go" href="file:///usr/lib/os-release">go</a></body></html>'
    result = get_browser().render(page, [{"type": "click", "selector": "#go"}, {"type": "text", "expect": "ID="}],
                                  timeout_s=10)
    assert result.checks[1].passed, result


def test_memory_bomb_is_stopped_and_the_browser_goes_on() -> None:
    # 64 MB buffers up to 2.5 GB: stopped by the sandbox's memory limit well before that.
    page = """<html><body><p id="out">start</p><script>
const kept = []; let mb = 0;
try { while (mb < 2560) { const b = new ArrayBuffer(64 << 20); new Uint8Array(b).fill(1); kept.push(b); mb += 64; }
      document.getElementById("out").textContent = "allocated " + mb; }
catch (e) { document.getElementById("out").textContent = "stopped at " + mb; }
</script></body></html>"""
    result = get_browser().render(page, [{"type": "text", "selector": "#out", "expect": "allocated 2560"}],
                                  timeout_s=10)
    assert not result.checks[0].passed, result
    heap_bomb = "<script>const a = []; while (true) a.push(new Array(1e6).fill(Math.random()));</script>"
    assert get_browser().render(heap_bomb, timeout_s=10).elapsed_s < 30  # a safety bound: it ends
    assert _still_usable()


def test_popup_storm_and_loop_end_within_the_time_limit() -> None:
    storm = "<p>x</p><script>for (let i = 0; i < 5000; i++) window.open('about:blank#' + i);</script>"
    loop = "<p>x</p><script>while (true) {}</script>"
    for page in (storm, loop):
        start = time.monotonic()
        result = get_browser().render(page, [{"type": "text", "expect": "x"}], timeout_s=2)
        assert time.monotonic() - start < 30  # a safety bound, not a timing
        assert result.elapsed_s < 30
    assert _still_usable()


def test_a_killed_browser_is_relaunched() -> None:
    assert _still_usable()
    procs = _chromium_descendants(os.getpid())
    for pid in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert _wait_gone(list(procs), 10) == []
    assert _still_usable()  # the next page is rendered by a new browser


def test_a_hung_browser_is_killed_by_the_watchdog_and_relaunched() -> None:
    assert _still_usable()
    procs = _chromium_descendants(os.getpid())
    for pid in procs:
        os.kill(pid, signal.SIGSTOP)  # the whole browser stops answering
    start = time.monotonic()
    result = get_browser().render("<p>x</p>", [{"type": "text", "expect": "x"}], timeout_s=2)
    assert time.monotonic() - start < 30  # a safety bound: time limit + watchdog grace, not forever
    assert not result.checks[0].passed and result.error
    assert _wait_gone(list(procs), 10) == []
    assert _still_usable()


def test_no_chromium_outlives_close_or_a_killed_worker() -> None:
    assert _still_usable()
    procs = list(_chromium_descendants(os.getpid()))
    close_browser()
    assert _wait_gone(procs, 30) == []
    worker = subprocess.Popen(
        [sys.executable, "-c", "from rewards.browser import get_browser; import time, sys;"
         "assert get_browser().render('<p>x</p>').loaded; print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    below: dict[int, tuple[int, str]] = {}
    try:
        assert worker.stdout.readline().strip() == "ready"
        below = _descendants(worker.pid)
        procs = [pid for pid, (_, exe) in below.items() if exe.startswith("/usr/lib/chromium/")]
        assert procs
        worker.kill()
        worker.wait()
        assert _wait_gone(procs, 30) == []
    finally:
        worker.kill()
        # The killed worker could not remove its render folder (the pid file names its sandbox).
        for folder in Path(tempfile.gettempdir()).glob("ling-render-*"):
            try:
                if int((folder / "pid").read_text()) in below:
                    shutil.rmtree(folder)
            except (OSError, ValueError):
                pass
