"""Headless Chromium for the front-end rewards: render a page, run scripted checks, measure layout.

One Chromium per process (a reward worker), launched on first use and reused across calls; every
page gets a fresh browser context (no shared cookies, storage or cache between responses). The
page is written to a folder bound read-only into the sandbox at /pages and opened over file://.

The sandbox. Pages are untrusted code, so Chromium runs in the same kind of isolation as the code
reward (rewards/sandbox.py). Playwright launches a small wrapper script as the browser; the
wrapper execs

    env -i HOME=/tmp ...                                          none of the caller's environment
    prlimit --data --fsize --core=0 --                             limits, set from outside
    setpriv --reuid=U --regid=U --clear-groups --no-new-privs --   a leased uid (as root)
    bwrap --unshare-all --die-with-parent --new-session            own user namespace, no network
          --ro-bind /usr /usr (+ /lib, /bin symlinks), /etc/fonts  (an empty network namespace),
          --proc /proc --dev /dev --tmpfs /dev/shm --tmpfs /tmp    own pids, no host files but
          --ro-bind PAGES /pages                                   /usr and the fonts
    prlimit --nproc=N --                                           process limit, inside
    /usr/lib/chromium/chromium <playwright's arguments>

The process limit is set inside the user namespace, where it counts Chromium's processes and
threads only (see rewards/sandbox.py: outside, it would count every thread of the worker's uid
when not root). The uid (as root) is leased for the browser's life (`rewards.sandbox.lease_uid`)
and released once, when the browser is shut down. A browser that cannot launch raises
`SandboxError`, an infrastructure failure (its pages are skipped, never scored 0).

Playwright talks to it over `--remote-debugging-pipe` (fds 3 and 4, which survive the exec chain
and bwrap), so no port is needed. Chromium's own sandbox needs user namespaces or a setuid
helper, so it runs with `--no-sandbox`: the bubblewrap sandbox above is the isolation. The
memory limit is RLIMIT_DATA, not RLIMIT_AS (Chromium reserves tens of GB of address space it never
uses); a page over it crashes its renderer, not the worker. The profile, cache and page storage
live in the sandbox's size-capped /tmp and vanish with it.

A dead or hung browser is not fatal: a watchdog kills the sandbox when a page runs past its time
limit plus `WATCHDOG_GRACE_S` (a Playwright call stuck on a hung browser then returns), and the
next page launches a new browser. `--die-with-parent` and the uid sweep on close make sure no
Chromium process outlives its browser or its worker.

Chromium is Debian's (`apt-get install chromium`), driven by pip `playwright`'s bundled driver;
`playwright install` is never run. Launch flags follow the environment notes (no GPU, no
background networking, DNS mapped to NOTFOUND except localhost).

Scripted checks (the dataset's `checks` column: a list of dicts, run in order on one page, so
clicks accumulate state):

    {"type": "exists", "selector": "#todo-list"}                    # an element matches
    {"type": "exists", "selector": "li", "count": 3}                # exactly 3 match
    {"type": "text", "selector": "h1", "expect": "Todo"}           # its text contains "Todo"
    {"type": "text", "expect": "Welcome"}                           # the page's text contains it
    {"type": "click", "selector": "#inc"}                           # clicking changes the DOM
    {"type": "click", "selector": "#inc", "target": "#count", "expect": "1"}
                                                                    # after the click, #count's text contains "1"

`selector` is a CSS selector; `text`/`expect` compare case-sensitively after collapsing
whitespace. A check passes or fails; a malformed check is a failure naming the problem.

What the page cannot touch. The page is the policy's output, and its JavaScript runs before we
measure: it can replace any built-in of its own world (`getComputedStyle`, the `outerHTML` getter,
`Math.max`, `querySelectorAll`). So every read we score (the layout measurements, check counts and
texts, the before/after DOM of a click) runs in an isolated world of the page's frame (CDP
`Page.createIsolatedWorld`, then `Runtime.evaluate` in that context): the same DOM, but its own
JavaScript globals and DOM wrappers, which the page's script cannot reach. The click itself is a
real input event (playwright). A measurement that fails or returns malformed numbers marks only
its own page (`RenderResult.layout_error`).

Per-page time limit: `timeout_s` covers load, checks, screenshot and layout measurement; past it,
the remaining checks fail and the page counts as timed out (a `while(true){}` script cannot hold a
worker: the context is closed, which ends its renderer).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards.sandbox import (BWRAP_SYSTEM, SandboxError, SandboxUnavailable, UidLease, available_isolation, lease_uid,
                             unavailable_reason)

CHROMIUM = "/usr/lib/chromium/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
]
VIEWPORT = {"width": 800, "height": 600}
CHECK_TYPES = ("exists", "text", "click")
PAGES_DIR = "/pages"
"""Where the page files appear inside the sandbox (bound read-only)."""
WATCHDOG_GRACE_S = 5.0
"""A render still running this long after its page's time limit kills the browser's sandbox."""


@dataclass(frozen=True)
class BrowserLimits:
    """Limits of the browser's sandbox (the whole browser: it serves many pages)."""

    memory_mb: int = 1024
    """Writable memory per process (RLIMIT_DATA): a page's memory bomb crashes its renderer."""
    max_processes: int = 512
    """Processes and threads of the browser's sandbox (RLIMIT_NPROC in its user namespace;
    Chromium runs ~80 threads)."""
    tmp_mb: int = 512
    """Size of the sandbox's /tmp: profile, cache, page storage."""
    shm_mb: int = 64
    """Size of the sandbox's /dev/shm (playwright passes --disable-dev-shm-usage: little used)."""
    max_file_mb: int = 256
    """Largest file a process may write (RLIMIT_FSIZE)."""


@dataclass
class CheckResult:
    check: dict[str, Any]
    passed: bool
    detail: str = ""


@dataclass
class RenderResult:
    """What rendering one page produced."""

    loaded: bool
    """The page loaded (before the time limit, without a navigation error)."""
    console_errors: list[str] = field(default_factory=list)
    """console.error messages (including failed resource loads)."""
    page_errors: list[str] = field(default_factory=list)
    """Uncaught exceptions (JS errors)."""
    checks: list[CheckResult] = field(default_factory=list)
    screenshot: bytes | None = None
    """PNG of the viewport, taken after load and before the checks (what a user first sees)."""
    layout: dict[str, Any] | None = None
    """Measurements for `rewards.layout_score` (see `_LAYOUT_JS`), taken with the screenshot in an
    isolated world; None when not taken or when the measurement failed (`layout_error`)."""
    layout_error: str | None = None
    """Why the layout measurement of a loaded page failed."""
    timed_out: bool = False
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def errors(self) -> int:
        return len(self.console_errors) + len(self.page_errors)

    @property
    def checks_passed(self) -> int:
        return sum(c.passed for c in self.checks)


def validate_checks(checks: Any) -> list[dict[str, Any]]:
    """The `checks` column as a list of dicts; raises ValueError naming a malformed entry."""
    if checks is None:
        return []
    if isinstance(checks, str):  # a JSON string in a CSV-ish dataset
        checks = json.loads(checks)
    if not isinstance(checks, list):
        raise ValueError(f"checks must be a list of dicts, got {type(checks).__name__}")
    for i, c in enumerate(checks):
        if not isinstance(c, dict) or c.get("type") not in CHECK_TYPES:
            raise ValueError(f"checks[{i}] = {c!r}: needs type in {CHECK_TYPES}")
        if c["type"] in ("exists", "click") and not isinstance(c.get("selector"), str):
            raise ValueError(f"checks[{i}] = {c!r}: {c['type']} needs a selector")
        if c["type"] == "text" and not isinstance(c.get("expect"), str):
            raise ValueError(f"checks[{i}] = {c!r}: text needs expect (a string)")
    return checks


class Browser:
    """A sandboxed Chromium for this process; `render` opens each page in a fresh context."""

    def __init__(self, limits: BrowserLimits = BrowserLimits()) -> None:
        from playwright.sync_api import sync_playwright

        if available_isolation() != "bwrap":
            raise SandboxUnavailable(
                "the front-end rewards run Chromium in bubblewrap: install it (`apt-get install -y bubblewrap`, "
                "done by scripts/setup.sh); as non-root, bubblewrap must be able to create user namespaces "
                f"({unavailable_reason() or 'only the root fallback works here'})"
            )
        self.limits = limits
        self._dir = Path(tempfile.mkdtemp(prefix="ling-render-"))
        self._pages = self._dir / "pages"
        self._pages.mkdir()
        # The sandbox's uid must reach the pages (bwrap resolves the bound path as that uid).
        self._dir.chmod(0o755)
        self._pages.chmod(0o755)
        self._playwright = sync_playwright().start()
        self._browser: Any = None
        self.uid: int | None = None
        """The uid the browser runs as (a leased one per launch as root; ours otherwise)."""
        self._lease: UidLease | None = None
        try:
            self._launch()
        except BaseException:
            self._playwright.stop()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    def _launch(self) -> None:
        """Start the sandboxed Chromium; raises `SandboxError` when it does not come up."""
        from playwright.sync_api import Error as PlaywrightError

        self._lease = lease_uid() if os.geteuid() == 0 else None
        self.uid = self._lease.uid if self._lease is not None else os.geteuid()
        wrapper = self._dir / "chromium"
        wrapper.write_text(_wrapper_script(self._sandbox_command(), self._dir / "pid"))
        wrapper.chmod(0o700)
        try:
            self._browser = self._playwright.chromium.launch(executable_path=str(wrapper), args=LAUNCH_ARGS, headless=True)
        except PlaywrightError as e:
            # Not the page's doing (no page was opened yet): the sandbox or Chromium cannot start.
            self._kill_sandbox()
            if self._lease is not None:
                self._lease.release()
            self._browser, self.uid, self._lease = None, None, None
            raise SandboxError(f"Chromium's sandbox did not start: {' '.join(str(e).split())[:500]}") from e

    def _sandbox_command(self) -> list[str]:
        lim = self.limits
        env = ["env", "-i", "HOME=/tmp", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
        limit = ["prlimit", f"--data={lim.memory_mb << 20}", f"--fsize={lim.max_file_mb << 20}", "--core=0", "--"]
        drop = (["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--no-new-privs", "--"]
                if os.geteuid() == 0 else [])
        return env + limit + drop + [
            "bwrap", "--unshare-all", "--die-with-parent", "--new-session", *BWRAP_SYSTEM,
            "--ro-bind-try", "/etc/fonts", "/etc/fonts",
            "--size", str(lim.shm_mb << 20), "--tmpfs", "/dev/shm",
            "--size", str(lim.tmp_mb << 20), "--tmpfs", "/tmp",
            "--ro-bind", str(self._pages), PAGES_DIR, "--chdir", "/tmp",
            # Inside the user namespace: counts the browser's own processes and threads only.
            "prlimit", f"--nproc={lim.max_processes}", "--",
            CHROMIUM,
        ]  # fmt: skip

    def _kill_sandbox(self) -> None:
        """SIGKILL the browser's sandbox (bwrap takes its pid namespace with it) and, as root,
        every process left with its uid while the uid is still leased (never after its release:
        it may be another sandbox's by then). Safe from another thread (the watchdog)."""
        try:
            pid = int((self._dir / "pid").read_text())
            # Only while that pid is still our bwrap: a pid left from a dead browser may be reused.
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"bwrap":
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone already
        lease = self._lease  # read once: the main thread may replace it meanwhile
        if lease is not None:
            lease.kill_processes()

    def _shutdown_browser(self) -> None:
        """Close the browser, whatever state it is in; the next page launches a new one. The
        uid's lease is released here, and only here."""
        from playwright.sync_api import Error as PlaywrightError

        self._kill_sandbox()  # first: closing a hung browser would wait on it
        try:
            self._browser.close()
        except PlaywrightError:
            pass
        if self._lease is not None:
            self._lease.release()
        self._browser, self.uid, self._lease = None, None, None

    def close(self) -> None:
        try:
            if self._browser is not None:
                self._shutdown_browser()
            self._playwright.stop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _new_context(self) -> Any:
        """A fresh context; a browser that died since the last page (crash, watchdog) is relaunched."""
        from playwright.sync_api import Error as PlaywrightError

        if self._browser is None or not self._browser.is_connected():
            if self._browser is not None:
                self._shutdown_browser()
            self._launch()
        try:
            return self._browser.new_context(viewport=VIEWPORT, java_script_enabled=True)
        except PlaywrightError:  # died without playwright noticing yet
            self._shutdown_browser()
            self._launch()
            return self._browser.new_context(viewport=VIEWPORT, java_script_enabled=True)

    def render(self, html: str, checks: list[dict[str, Any]] | None = None, timeout_s: float = 10.0,
               screenshot: bool = True, layout: bool = True) -> RenderResult:
        from playwright.sync_api import Error as PlaywrightError

        start = time.monotonic()
        deadline = start + timeout_s
        result = RenderResult(loaded=False)
        name = f"{hashlib.sha1(html.encode()).hexdigest()}-{time.monotonic_ns()}.html"
        path = self._pages / name
        path.write_text(html, encoding="utf-8")
        path.chmod(0o644)
        watchdog = threading.Timer(timeout_s + WATCHDOG_GRACE_S, self._kill_sandbox)
        watchdog.start()
        context = None
        try:
            context = self._new_context()
            page = context.new_page()
            page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: result.page_errors.append(str(e)))
            page.goto(f"file://{PAGES_DIR}/{name}", wait_until="load", timeout=_ms(deadline))
            result.loaded = True
            if screenshot:
                result.screenshot = page.screenshot(timeout=_ms(deadline))
            page.set_default_timeout(_ms(deadline))
            measure = IsolatedWorld(context.new_cdp_session(page), page)
            if layout:
                try:
                    result.layout = measure.evaluate(f"({_LAYOUT_JS})()", deadline)
                except MeasureError as e:
                    result.layout_error = str(e)
            for check in checks or []:
                result.checks.append(_run_check(page, measure, check, deadline))
        except PlaywrightError as e:
            result.timed_out = time.monotonic() >= deadline or "Timeout" in type(e).__name__
            result.error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        finally:
            try:
                if context is not None:
                    context.close()  # also ends a renderer stuck in a script loop
            except PlaywrightError:
                self._shutdown_browser()  # it died with the page: the next page gets a new one
            watchdog.cancel()
            path.unlink(missing_ok=True)
        # Checks not reached (time limit or error) fail.
        for check in (checks or [])[len(result.checks):]:
            result.checks.append(CheckResult(check, False, "not run: " + (result.error or "page did not load")))
        result.elapsed_s = time.monotonic() - start
        return result


def _wrapper_script(command: list[str], pid_file: Path) -> str:
    """The executable playwright launches as "the browser": it records its pid (the sandbox's
    bwrap after the execs) and execs the sandboxed Chromium with playwright's arguments."""
    return f"#!/bin/sh\necho $$ > {shlex.quote(str(pid_file))}\nexec {shlex.join(command)} \"$@\"\n"


def _ms(deadline: float) -> float:
    """Milliseconds left until `deadline` for a playwright timeout (at least 1: 0 means no limit)."""
    return max(1.0, (deadline - time.monotonic()) * 1000)


def _norm(text: str) -> str:
    return " ".join(text.split())


class MeasureError(Exception):
    """A read in the isolated world failed (a bad selector, a destroyed document, a result that is
    not JSON): the check or measurement fails, the page's other results stand."""


class IsolatedWorld:
    """Evaluates our JavaScript in a fresh isolated world of the page's main frame, where the page's
    own script cannot replace the built-ins we call (see the module docstring). A world is created
    per read: a click may navigate and destroy the previous document's worlds."""

    NAME = "ling-rl-measure"

    def __init__(self, cdp: Any, page: Any) -> None:
        self._cdp, self._page = cdp, page

    def evaluate(self, expression: str, deadline: float) -> Any:
        """The JSON value of `expression`; raises `MeasureError` when it throws or is not JSON.
        A hung renderer is ended by the render's watchdog (the CDP call then raises)."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            frame_id = self._cdp.send("Page.getFrameTree")["frameTree"]["frame"]["id"]
            world = self._cdp.send("Page.createIsolatedWorld", {"frameId": frame_id, "worldName": self.NAME})
            answer = self._cdp.send("Runtime.evaluate", {
                "expression": expression, "contextId": world["executionContextId"], "returnByValue": True,
                "timeout": _ms(deadline)})
        except PlaywrightError as e:
            if self._page.is_closed() or time.monotonic() >= deadline:
                raise  # the page (or its renderer) is gone, or out of time: the render's error
            raise MeasureError(f"isolated evaluation failed: {' '.join(str(e).split())[:200]}") from e
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "exception")
            raise MeasureError(f"measurement threw: {' '.join(str(text).split())[:200]}")
        return answer["result"].get("value")

    def call(self, function: str, arg: Any, deadline: float) -> Any:
        """`function(arg)` in the isolated world; `arg` is passed as JSON."""
        return self.evaluate(f"({function})({json.dumps(arg)})", deadline)


# Reads of the checks, in the isolated world. `sel` is a CSS selector; a malformed one throws.
_COUNT_JS = "sel => document.querySelectorAll(sel).length"
_TEXT_JS = "sel => Array.from(document.querySelectorAll(sel), e => e.innerText).join(' ')"
_OUTER_HTML_JS = "sel => { const e = document.querySelector(sel); return e ? e.outerHTML : null; }"


def _run_check(page: Any, world: IsolatedWorld, check: dict[str, Any], deadline: float) -> CheckResult:
    """Run one scripted check; playwright timeouts propagate (the page is then out of time). The
    DOM is read in the isolated world; the click is playwright's (a real input event)."""
    kind, selector = check.get("type"), check.get("selector")
    try:
        if kind == "exists":
            n = world.call(_COUNT_JS, selector, deadline)
            want = check.get("count")
            passed = n == want if want is not None else n > 0
            return CheckResult(check, passed, f"{n} match")
        if kind == "text":
            text = _norm(str(world.call(_TEXT_JS, selector or "body", deadline)))
            return CheckResult(check, _norm(check["expect"]) in text, f"text: {text[:80]!r}")
        if kind == "click":
            target = check.get("target", "body")
            if world.call(_COUNT_JS, selector, deadline) == 0:
                return CheckResult(check, False, f"no element matches {selector!r}")
            before = world.call(_OUTER_HTML_JS, target, deadline)
            page.locator(selector).first.click(timeout=_ms(deadline))
            page.wait_for_timeout(min(50.0, _ms(deadline)))  # let handlers scheduled by the click run
            if "expect" in check:
                text = _norm(str(world.call(_TEXT_JS, target, deadline)))
                return CheckResult(check, _norm(str(check["expect"])) in text, f"{target} text: {text[:80]!r}")
            after = world.call(_OUTER_HTML_JS, target, deadline)
            return CheckResult(check, after != before, "changed" if after != before else "no DOM change")
    except MeasureError as e:
        return CheckResult(check, False, str(e))
    return CheckResult(check, False, f"unknown check type {kind!r}")


# Measured in an isolated world of the page: the visible elements that draw something (text, images, form controls,
# boxes with a background or border), with their box, text colour, effective background colour
# (the first non-transparent one up the ancestors) and font size. Capped at 300 elements.
_LAYOUT_JS = """
() => {
  const parse = c => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(s => parseFloat(s)); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const bg = el => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0.5) return c.slice(0, 3); } return [255, 255, 255]; };
  const out = [];
  for (const el of document.body ? document.body.querySelectorAll('*') : []) {
    if (out.length >= 300) break;
    const s = getComputedStyle(el); const r = el.getBoundingClientRect();
    if (s.display === 'none' || s.visibility === 'hidden' || parseFloat(s.opacity) === 0 || r.width < 1 || r.height < 1) continue;
    if (['SCRIPT', 'STYLE', 'BR'].includes(el.tagName)) continue;
    const ownText = Array.from(el.childNodes).filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    const boxed = (parse(s.backgroundColor) || [0, 0, 0, 0])[3] > 0.5 || parseFloat(s.borderTopWidth) > 0;
    const replaced = ['IMG', 'CANVAS', 'SVG', 'INPUT', 'BUTTON', 'TEXTAREA', 'SELECT', 'VIDEO'].includes(el.tagName.toUpperCase());
    if (!ownText && !boxed && !replaced) continue;
    out.push({tag: el.tagName.toLowerCase(), x: r.left, y: r.top, w: r.width, h: r.height, text: ownText.length,
              color: (parse(s.color) || [0, 0, 0]).slice(0, 3), bg: bg(el), font: parseFloat(s.fontSize),
              bold: parseInt(s.fontWeight) >= 600, leaf: el.children.length === 0, boxed: boxed});
  }
  const d = document.documentElement;
  return {viewport: {w: window.innerWidth, h: window.innerHeight},
          scroll: {w: Math.max(d.scrollWidth, document.body ? document.body.scrollWidth : 0), h: d.scrollHeight},
          elements: out};
}
"""


_BROWSER: Browser | None = None


def get_browser() -> Browser:
    """This process's Chromium, launched on first use and closed at exit."""
    global _BROWSER
    if _BROWSER is None:
        _BROWSER = Browser()
        atexit.register(_BROWSER.close)
    return _BROWSER


def close_browser() -> None:
    """Close this process's Chromium (playwright's sync API keeps an event loop on the thread
    that started it until then)."""
    global _BROWSER
    if _BROWSER is not None:
        _BROWSER.close()
        atexit.unregister(_BROWSER.close)
        _BROWSER = None


class RenderCache:
    """Recent render results by (page, checks), so `function`, `aesthetics` and `sfa` in one worker
    render a response once. Small: results hold screenshots."""

    def __init__(self, max_entries: int = 64) -> None:
        self._items: OrderedDict[str, RenderResult] = OrderedDict()
        self._max = max_entries

    def render(self, html: str, checks: list[dict[str, Any]], timeout_s: float) -> RenderResult:
        key = hashlib.sha1(json.dumps([html, checks, timeout_s], sort_keys=True, default=str).encode()).hexdigest()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        result = get_browser().render(html, checks, timeout_s=timeout_s)
        self._items[key] = result
        if len(self._items) > self._max:
            self._items.popitem(last=False)
        return result


RENDER_CACHE = RenderCache()
