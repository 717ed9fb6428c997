"""One episode's tools, or environment instance, in a process of its own.

    driver thread (EnvironmentProcess)          forkserver child P (supervisor)     P's child R (runner)
    start() ----- multiprocessing forkserver --> setsid, subreaper, output to log --> loads the tools,
       <------------------------------------------------------------------------- {"tools": [...]}
    reset / call / get_reward -- JSON request --------------------------------------> runs user code
       <---------------------------------------------------------------------------- JSON reply
    close(), timeout, broken reply: SIGKILL every descendant of P, then P

Why this shape:
- forkserver, not fork: the driver has Ray and torch threads, and forking a threaded process can
  leave the child holding locks no thread will release. The forkserver is a fresh interpreter that
  forks an episode's process in milliseconds.
- P runs no user code: it is the session leader and a child subreaper (orphans of the tools' own
  children are re-parented to it, not to init), so every process the episode started stays one
  of its descendants until P is killed; when R dies on its own (os._exit in a tool), P kills what R
  left running before it exits. A tool can therefore not leave a process behind, even one that
  double-forked into a session of its own.
- The parent never unpickles what the episode sends: replies are length-prefixed JSON read with a
  size limit and a deadline for the whole message (multiprocessing's `Connection.recv_bytes` has
  a size limit but can wait forever on a half-written message, so the framing is our own). A reply
  that does not parse, does not fit the protocol, or does not come in time ends the process.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import json
import math
import multiprocessing
import numbers
import os
import signal
import socket
import struct
import sys
import time
import warnings
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from ling_rl.environments.loading import build_tools
from ling_rl.environments.spec import ResolvedEnvironment, ToolResult, ToolStatus
from ling_rl.reward.contract import InfrastructureError

_HEADER = struct.Struct("!I")
_REQUEST_LIMIT_BYTES = 64 << 20  # the parent's requests (tool arguments, a dataset row)
_REPLY_OVERHEAD_BYTES = 64 << 10  # the JSON around a reply's text
_MARKER_MAX_CHARS = 120  # the truncation marker's length, at most
_KILL_ROUNDS = 50  # a process forking while it is killed is caught in a later round
_EXIT_WAIT_S = 5.0  # a SIGKILLed process is gone well within this
_SUPERVISOR_EXIT_S = 1.0  # the supervisor exits within this once the runner died (it reaps, then exits)
_SUPERVISOR_REAP_S = 2.0
_EXIT_CODE_WAIT_S = 2.0  # how long a closed connection waits for the exit code that explains it
_CHILD_STATUSES: tuple[ToolStatus, ...] = ("ok", "error", "unknown_tool", "bad_call")

# Linux prctl options (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class EnvironmentFailure(RuntimeError):
    """The episode's process cannot go on (did not start, crashed, reset/get_reward failed or
    timed out); the message says which and why."""


class _Broken(Exception):
    """The other side closed the connection or sent something outside the protocol."""


class _Closed(_Broken):
    """The other side closed the connection (the process exited, most likely)."""


class _Late(Exception):
    """No complete message before the deadline."""


class EnvironmentProcess:
    """The tools of one episode (TRL's `tools`), or one environment instance (TRL's
    `environment_factory`), served from a process of their own. Methods are called from one thread
    at a time. `call` never raises for anything a tool does; the other methods raise
    `EnvironmentFailure` when the process cannot do what was asked."""

    def __init__(self, env: ResolvedEnvironment, timeout_s: float, max_output_chars: int,
                 log_path: str | None = None) -> None:
        """`timeout_s` bounds start, `reset` and `get_reward`; `max_output_chars` cuts tool results;
        the process's stdout and stderr go to `log_path` (appended) or /dev/null."""
        self._env = env
        self._timeout_s = timeout_s
        self._max_output_chars = max_output_chars
        self._log_path = log_path
        self._process: BaseProcess | None = None
        self._sock: socket.socket | None = None
        self._tools: tuple[str, ...] = ()
        self._started = False
        self._closed = False
        self._lost: str | None = None  # why a factory environment's state is gone
        self._request_id = 0

    @property
    def alive(self) -> bool:
        """Whether the episode can go on using it: started, not closed, and (for a factory
        environment) its process has not died. A tools-only environment stays alive after a tool
        killed its process: the next `call` starts a new one (the tools hold no state)."""
        return self._started and not self._closed and self._lost is None

    def start(self) -> None:
        """Start the process and load the tools within `timeout_s`, else `EnvironmentFailure`."""
        if self._closed or self._started:
            raise EnvironmentFailure(f"{self._what()}: start after {'close' if self._closed else 'start'}")
        self._launch()
        self._started = True

    def reset(self, row: dict[str, Any]) -> str | None:
        """`instance.reset(**row)` for a factory environment (its observation, appended to the last
        user message); None for tools only."""
        if self._env.factory_ref is None:
            return None
        reply = self._request_or_fail("reset", {"row": _json_row(row)})
        observation = reply.get("observation")
        if observation is not None and not isinstance(observation, str):
            raise self._fail(f"reset replied {type(observation).__name__}, not text")
        return observation

    def get_reward(self) -> float | None:
        """The environment's `get_reward()`; None when it has none."""
        if self._env.factory_ref is None or not self._env.has_reward:
            return None
        value = self._request_or_fail("get_reward", {}).get("reward")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(f"get_reward replied {type(value).__name__}, not a number")
        if not math.isfinite(value):
            raise self._fail(f"get_reward returned {value}, not a finite number")
        return float(value)

    def call(self, name: str, arguments: dict[str, Any], timeout_s: float) -> ToolResult:
        """Run tool `name` with `arguments` within `timeout_s`; the result's status says how it went."""
        started = time.monotonic()

        def result(status: ToolStatus, content: str, **kwargs: Any) -> ToolResult:
            return ToolResult(name, content, status, seconds=time.monotonic() - started, **kwargs)

        if not self.alive:
            reason = "it was closed" if self._closed else self._lost or "it was not started"
            return result("crashed", _error_text(f"the environment cannot run tools: {reason}"))
        if name not in self._tools:
            return result("unknown_tool", _error_text(f"unknown tool {name!r}; tools: {', '.join(self._tools)}"))
        if self._process is None:  # tools only: the last call's process was killed
            try:
                self._launch()
            except EnvironmentFailure as e:
                self._lost = str(e)
                return result("crashed", _error_text(f"the tools' process could not restart: {e}"))
        try:
            request = self._encode("call", {"name": name, "arguments": arguments})
        except (TypeError, ValueError) as e:
            return result("bad_call", _error_text(f"arguments of {name} are not JSON data: {e}"))
        try:
            reply = self._exchange(request, time.monotonic() + timeout_s)
        except _Late:
            self._end(f"tool {name!r} ran past its {timeout_s:g} s limit")
            return result("timeout", _error_text(f"tool {name!r} did not finish within {timeout_s:g} s and was stopped"))
        except _Broken as e:
            self._end(f"tool {name!r} crashed: {e}")
            return result("crashed", _error_text(f"tool {name!r} crashed: {e}"))
        status, content, truncated = reply.get("status"), reply.get("content"), reply.get("truncated")
        if (status not in _CHILD_STATUSES or not isinstance(content, str) or not isinstance(truncated, bool)
                or len(content) > self._max_output_chars + _MARKER_MAX_CHARS or not _is_utf8(content)):
            self._end(f"tool {name!r} broke the protocol")
            return result("crashed", _error_text(f"tool {name!r} crashed: its process sent a malformed reply"))
        extra = {"infrastructure": True} if reply.get("infrastructure") is True else {}
        return result(status, content, truncated=truncated, extra=extra)

    def close(self) -> None:
        """Kill the process and everything it started; idempotent."""
        self._closed = True
        self._stop()

    # -- the process ------------------------------------------------------------------------------

    def _launch(self) -> None:
        context = _forkserver()
        parent_sock, child_sock = socket.socketpair()
        process = context.Process(
            target=_supervise, name=f"ling-rl-episode-{self._env.env_name or 'tools'}", daemon=True,
            args=(child_sock, self._env, self._max_output_chars, self._log_path))
        try:
            process.start()
        except Exception as e:
            parent_sock.close()
            raise EnvironmentFailure(f"{self._what()}: the process did not start: {e!r}") from e
        finally:
            child_sock.close()
        self._process, self._sock = process, parent_sock
        try:
            hello = _receive(parent_sock, self._reply_limit(), time.monotonic() + self._timeout_s)
        except _Late:
            self._stop()
            raise EnvironmentFailure(f"{self._what()}: loading the tools took over {self._timeout_s:g} s "
                                     "(environment.timeout_s)") from None
        except _Broken as e:
            self._stop()
            raise EnvironmentFailure(f"{self._what()}: the process died while loading the tools: {e}") from None
        tools = hello.get("tools") if isinstance(hello, dict) else None
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            self._stop()
            error = hello.get("error") if isinstance(hello, dict) else None
            raise EnvironmentFailure(f"{self._what()}: {error if isinstance(error, str) else 'malformed first message'}")
        self._tools = tuple(tools)

    def _request_or_fail(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """One reset or get_reward round trip; any failure ends the process and raises."""
        if not self.alive or self._process is None:
            reason = "it was closed" if self._closed else self._lost or "it was not started"
            raise EnvironmentFailure(f"{self._what()}: {op} impossible: {reason}")
        try:
            reply = self._exchange(self._encode(op, fields), time.monotonic() + self._timeout_s)
        except _Late:
            raise self._fail(f"{op} took over {self._timeout_s:g} s (environment.timeout_s)") from None
        except _Broken as e:
            raise self._fail(f"{op}: the process crashed: {e}") from None
        if "error" in reply:
            raise self._fail(f"{op} failed: {reply['error']}")
        return reply

    def _encode(self, op: str, fields: dict[str, Any]) -> bytes:
        self._request_id += 1
        return json.dumps({"op": op, "id": self._request_id, **fields}, ensure_ascii=False).encode()

    def _exchange(self, request: bytes, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        try:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            self._sock.sendall(_HEADER.pack(len(request)) + request)
        except TimeoutError:  # the process does not read (its buffers are full)
            raise _Late() from None
        except OSError as e:  # the process closed its end
            raise _Broken(self._exit_description(e)) from None
        try:
            reply = _receive(self._sock, self._reply_limit(), deadline)
        except _Closed as e:
            raise _Broken(self._exit_description(e)) from None
        if not isinstance(reply, dict) or reply.get("id") != self._request_id:
            raise _Broken("its reply does not answer the request (malformed or out of order)")
        return reply

    def _exit_description(self, error: BaseException) -> str:
        """What happened to the process: its exit code when it has exited, else the protocol error."""
        assert self._process is not None
        _join(self._process, _EXIT_CODE_WAIT_S)  # after EOF, the supervisor cleans up, then exits
        code = self._process.exitcode
        if code is None:
            return str(error)
        return f"its process exited with code {code}" if code >= 0 else f"its process was killed by signal {-code}"

    def _reply_limit(self) -> int:
        # ensure_ascii=False: at most 6 bytes per character (a control character escaped as \u00XX)
        return 6 * (self._max_output_chars + _MARKER_MAX_CHARS) + _REPLY_OVERHEAD_BYTES

    def _end(self, why: str) -> None:
        """Kill the process after a timeout or crash; a factory environment's state dies with it."""
        self._stop()
        if self._env.factory_ref is not None:
            self._lost = f"its process was stopped ({why})"

    def _fail(self, why: str) -> EnvironmentFailure:
        self._end(why)
        return EnvironmentFailure(f"{self._what()}: {why}")

    def _stop(self) -> None:
        process, sock = self._process, self._sock
        self._process = self._sock = None
        if process is not None:
            if process.pid is not None and process.exitcode is None:
                # The supervisor kills the tools' processes, reaps them and exits; if it does not
                # (stopped by a tool, or not yet listening), the parent kills the tree itself.
                os.kill(process.pid, signal.SIGTERM)
                _join(process, _SUPERVISOR_EXIT_S)
                if process.exitcode is None:
                    _kill_descendants(process.pid)
                    _kill_group(process.pid)
            if _join(process, _EXIT_WAIT_S):
                process.close()
        if sock is not None:
            sock.close()

    def _what(self) -> str:
        return f"environment {self._env.env_name}" if self._env.env_name else f"tools {', '.join(self._env.tool_names)}"


# -- the episode's side ---------------------------------------------------------------------------


def _supervise(sock: socket.socket, env: ResolvedEnvironment, max_output_chars: int, log_path: str | None) -> None:
    """Process P: a session of its own, a subreaper, dying with the forkserver (which dies with the
    driver); forks R to run the tools, and when R ends, kills whatever R started, then exits with
    R's exit code."""
    os.setsid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _redirect_output(log_path)
    _close_inherited_fds(keep=sock.fileno())
    signal.signal(signal.SIGTERM, _raise_stop)  # the parent's "stop everything" (close, timeout)
    runner = os.fork()
    if runner == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            _serve(sock, env, max_output_chars)
            code = 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # never return into multiprocessing's bootstrap from a forked runner
    sock.close()
    code = 0
    try:
        while True:
            pid, status = os.waitpid(-1, 0)  # orphans are re-parented to P: reap them as they end
            if pid == runner:
                code = os.waitstatus_to_exitcode(status)
                break
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second "stop" must not cut the cleanup short
    _kill_descendants(os.getpid())
    _reap_children(_SUPERVISOR_REAP_S)
    sys.exit(code if code >= 0 else 128 - code)  # killed by signal n: 128 + n, as a shell says


class _Stop(Exception):
    """SIGTERM in the supervisor: the parent wants the episode's processes gone."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def _serve(sock: socket.socket, env: ResolvedEnvironment, max_output_chars: int) -> None:
    """Process R: load the tools, then answer requests until the parent closes the connection."""
    os.chdir(env.workdir)
    try:
        instance, tools = build_tools(env)
    except BaseException as e:  # noqa: BLE001 (a factory or import failing in any way is reported)
        _send(sock, {"error": f"loading the tools failed: {_describe(e)}"})
        return
    _send(sock, {"tools": list(tools)})
    loop = asyncio.new_event_loop()  # one loop for the process's life: async tools may keep state on it
    while True:
        try:
            request = _receive(sock, _REQUEST_LIMIT_BYTES, None)
        except _Broken:
            return  # the parent closed the connection
        op = request["op"]
        if op == "call":
            reply = _run_tool(tools, request["name"], request["arguments"], max_output_chars, loop)
        elif op == "reset":
            reply = _run_reset(instance, request["row"], loop)
        else:
            reply = _run_get_reward(instance, loop)
        _send(sock, {"id": request["id"], **reply})


def _run_tool(tools: dict[str, Callable[..., Any]], name: str, arguments: dict[str, Any], max_output_chars: int,
              loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """TRL's handling of one call: `str(result)`, or `str({"error": str(e)})` when the tool raised."""
    tool = tools.get(name)
    if tool is None:
        return _reply("unknown_tool", _error_text(f"unknown tool {name!r}; tools: {', '.join(tools)}"), max_output_chars)
    if not isinstance(arguments, dict):
        return _reply("bad_call", _error_text(f"arguments of {name} must be an object"), max_output_chars)
    try:
        inspect.signature(tool).bind(**arguments)
    except TypeError as e:
        return _reply("bad_call", _error_text(f"bad arguments for {name}: {e}"), max_output_chars)
    except ValueError:  # no signature to check (some builtins): the call itself will say
        pass
    try:
        value = _settle(tool(**arguments), loop)
    except InfrastructureError as e:
        return {**_reply("error", _error_text(_message(e)), max_output_chars), "infrastructure": True}
    except BaseException as e:  # noqa: BLE001 (SystemExit from a tool is a tool error too)
        return _reply("error", _error_text(_message(e)), max_output_chars)
    try:
        text = str(value)
    except BaseException as e:  # noqa: BLE001
        return _reply("error", _error_text(f"the result of {name} could not be made text: {_describe(e)}"),
                      max_output_chars)
    return _reply("ok", text, max_output_chars)


def _run_reset(instance: object | None, row: dict[str, Any], loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    try:
        observation = _settle(instance.reset(**row), loop)  # type: ignore[attr-defined]
    except BaseException as e:  # noqa: BLE001
        return {"error": f"reset raised {_describe(e)}"}
    if observation is not None and not isinstance(observation, str):
        return {"error": f"reset returned {type(observation).__name__}, not a str or None"}
    return {"observation": observation}


def _run_get_reward(instance: object | None, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    try:
        value = _settle(instance.get_reward(), loop)  # type: ignore[attr-defined]
    except BaseException as e:  # noqa: BLE001
        return {"error": f"get_reward raised {_describe(e)}"}
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return {"error": f"get_reward returned {type(value).__name__}, not a number"}
    try:
        return {"reward": float(value)}
    except BaseException as e:  # noqa: BLE001
        return {"error": f"get_reward returned a number that is not a float: {_describe(e)}"}


def _settle(value: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """The value of an `async def` tool or method (its coroutine run on the process's loop)."""
    return loop.run_until_complete(value) if inspect.isawaitable(value) else value


def _reply(status: ToolStatus, text: str, max_output_chars: int) -> dict[str, Any]:
    truncated = len(text) > max_output_chars
    if truncated:
        text = f"{text[:max_output_chars]}\n[truncated: {len(text)} characters, the first {max_output_chars} shown]"
    return {"status": status, "content": text, "truncated": truncated}


def _redirect_output(log_path: str | None) -> None:
    """Standard output and error to the episode log (or nowhere), never the driver's terminal."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND if log_path else os.O_WRONLY
    fd = os.open(log_path or os.devnull, flags, 0o644)
    null_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_in, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null_in)


def _close_inherited_fds(keep: int) -> None:
    """Close what the forkserver's child inherits but the tools must not hold: the driver's end of
    the forkserver's liveness pipe (a tool writing to it stops the forkserver; a daemon holding it
    keeps the forkserver alive after the driver exits) and the resource tracker's pipe."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


# -- both sides -----------------------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message, ensure_ascii=False).encode("utf-8", "replace")  # lone surrogates -> '?'
    sock.sendall(_HEADER.pack(len(data)) + data)


def _receive(sock: socket.socket, limit: int, deadline: float | None) -> Any:
    """One JSON message of at most `limit` bytes, complete before `deadline` (monotonic; None: no
    limit). Raises `_Late` or `_Broken`; never evaluates anything but JSON."""
    (size,) = _HEADER.unpack(_receive_exactly(sock, _HEADER.size, deadline))
    if size > limit:
        raise _Broken(f"a message of {size} bytes (limit {limit})")
    data = _receive_exactly(sock, size, deadline)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Broken(f"a message of {size} bytes that is not JSON") from None


def _receive_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    data = bytearray()
    while len(data) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Late()
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(size - len(data), 1 << 20))
        except TimeoutError:
            raise _Late() from None
        except OSError as e:
            raise _Broken(f"the connection failed: {e}") from None
        if not chunk:
            raise _Closed("the connection closed")
        data += chunk
    return bytes(data)


def _kill_descendants(root: int) -> None:
    """SIGKILL every live descendant of `root`. The root is a subreaper, so a process whose parent
    dies while this runs is re-parented to it and found in the next round."""
    try:
        root_process = psutil.Process(root)
    except psutil.NoSuchProcess:
        return
    for _ in range(_KILL_ROUNDS):
        try:
            live = [p for p in root_process.children(recursive=True) if _running(p)]
        except psutil.NoSuchProcess:
            return
        if not live:
            return
        for p in live:
            _signal(p, signal.SIGKILL)


def _reap_children(within_s: float) -> None:
    """Wait for this process's (killed) children, so none is left a zombie for init to reap."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.002)


def _join(process: BaseProcess, timeout_s: float) -> bool:
    """Wait for the process to exit; whether it has. (If the forkserver, which reports exit codes,
    died, multiprocessing reads 255, and the process died with it: PR_SET_PDEATHSIG.)"""
    process.join(timeout_s)
    return process.exitcode is not None


def _kill_group(leader: int) -> None:
    """SIGKILL a session leader's process group (the leader and its plain children)."""
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:  # killed before its setsid: it leads no group yet
        try:
            os.kill(leader, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except psutil.NoSuchProcess:
        pass


# Imported once into the forkserver (with this module, the tool loader and the built-in tools), so
# an episode's process starts with them. Each child also re-runs the driver's main script, as multiprocessing does for a main
# run from a file: `ling-rl`'s script imports ling_rl.commands.cli, cheap once it is preloaded.
_PRELOAD = [__name__, "ling_rl.commands.cli"]

# Run as `python -m ling_rl.commands.cli`, that re-run finds the preloaded module in sys.modules and
# runpy warns on every episode start (48 lines on the console in a 3-step run); the re-run is
# harmless (the module's `__main__` block does not run under `__mp_main__`). The filter, set when
# this module is imported, is inherited by the forkserver's children.
warnings.filterwarnings("ignore", message=r"'ling_rl\.commands\.cli' found in sys\.modules", category=RuntimeWarning)


def _forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise EnvironmentFailure(f"reset: dataset row column {key!r} is not JSON data ({e})") from None
    return row


def _error_text(message: str) -> str:
    """A failure as the model reads it: TRL's `str({"error": ...})`."""
    return str({"error": message})


def _message(error: BaseException) -> str:
    """`str(error)` (what TRL shows the model), or its type when even that raises."""
    try:
        return str(error)
    except BaseException:  # noqa: BLE001 (an exception whose __str__ raises)
        return f"{type(error).__name__} (its message could not be made text)"


def _describe(error: BaseException) -> str:
    """The error with its type, for failures the driver logs."""
    text = _message(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
