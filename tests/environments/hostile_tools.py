"""Tools and environments that misbehave on purpose, for tests/environments/test_process.py. Each is
a real TRL-contract tool (typed, Google docstring) or environment class; they run only inside an
episode's own process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ling_rl.reward.contract import InfrastructureError

FOREVER_S = 3600


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


async def async_add(a: int, b: int) -> int:
    """Add two integers, asynchronously.

    Args:
        a: The first integer.
        b: The second integer.
    """
    await asyncio.sleep(0)
    return a + b


_LOOPS: list[int] = []


async def loop_identity() -> str:
    """The id of the event loop this call runs on, and how many calls came before on any loop."""
    _LOOPS.append(id(asyncio.get_running_loop()))
    return f"{_LOOPS[-1]} {len(_LOOPS) - 1}"


def process_ids() -> str:
    """The ids of the process running the tools and of its parent."""
    return f"{os.getpid()} {os.getppid()}"


def sleep_forever() -> str:
    """Sleep for an hour."""
    time.sleep(FOREVER_S)
    return "woke up"


def ignore_sigterm_and_sleep() -> str:
    """Ignore SIGTERM, then sleep for an hour."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(FOREVER_S)
    return "woke up"


def exit_abruptly() -> str:
    """End the process at once with exit code 3."""
    os._exit(3)


def raise_error(what: str) -> str:
    """Raise a ValueError.

    Args:
        what: The error's message.
    """
    raise ValueError(what)


def raise_infrastructure() -> str:
    """Raise InfrastructureError, as the python tool does when its sandbox cannot start."""
    raise InfrastructureError("sandbox did not start")


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def unprintable_result() -> str:
    """Return an object whose __str__ raises."""
    return _Unprintable()  # type: ignore[return-value]


class _BadMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message either")


def raise_unprintable() -> str:
    """Raise an exception whose __str__ raises."""
    raise _BadMessage()


def huge_result() -> str:
    """Return 10 MB of text."""
    return "x" * 10_000_000


def huge_print() -> str:
    """Print 10 MB to standard output and standard error, then return a short text."""
    sys.stdout.write("o" * 10_000_000)
    sys.stdout.flush()
    os.write(2, b"e" * 1_000_000)
    return "printed"


def garbage_to_every_fd() -> str:
    """Write garbage bytes to every open file descriptor (the connection to the driver included)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            os.write(int(name), b"\x00\xff\xfe garbage \x80\x81" * 100)
        except OSError:
            pass
    return "scribbled"


def stop_supervisor_and_sleep() -> str:
    """Stop (SIGSTOP) the process that supervises this one, start a grandchild, then sleep for an hour."""
    os.kill(os.getppid(), signal.SIGSTOP)
    subprocess.Popen(["sleep", str(FOREVER_S)], start_new_session=True)
    time.sleep(FOREVER_S)
    return "woke up"


def spawn_sleeper() -> str:
    """Start a `sleep` process that outlives this call and return its pid."""
    return str(subprocess.Popen(["sleep", str(FOREVER_S)]).pid)


def spawn_session_sleeper() -> str:
    """Start a `sleep` process in a session of its own and return its pid."""
    return str(subprocess.Popen(["sleep", str(FOREVER_S)], start_new_session=True).pid)


def double_fork() -> str:
    """Double-fork a sleeping grandchild into a session of its own (a daemon) and return its pid."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(FOREVER_S)
            os._exit(0)
        os.write(write_end, str(grandchild).encode())
        os._exit(0)  # the grandchild is an orphan now
    os.close(write_end)
    pid = os.read(read_end, 32).decode()
    os.close(read_end)
    return pid


def escape_and_exit(pid_file: str) -> str:
    """Double-fork a sleeping daemon, write its pid to a file, then end this process with code 3.

    Args:
        pid_file: Where to write the daemon's pid.
    """
    pid = double_fork()
    with open(pid_file, "w") as f:
        f.write(pid)
    os._exit(3)


def send_pickle(marker: str) -> str:
    """Write a well-framed pickle to every socket this process holds: unpickling it would create `marker`.

    Args:
        marker: The file an unpickling reader would create.
    """
    import pickle
    import struct

    class _Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (marker, "w"))

    data = pickle.dumps(_Payload())
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                os.write(int(name), struct.pack("!I", len(data)) + data)
        except OSError:
            pass
    return "sent"


class Counter:
    """A TRL-style environment: state across calls, an observation from reset, a reward."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0

    def reset(self, target: int, **row: Any) -> str:
        self.count = 0
        self.target = target
        return f" Count to {target}."

    def increment(self, by: int) -> int:
        """Add to the counter and return it.

        Args:
            by: How much to add.
        """
        self.count += by
        return self.count

    async def read(self) -> int:
        """The counter's value, read asynchronously."""
        await asyncio.sleep(0)
        return self.count

    def sleep_forever(self) -> str:
        """Sleep for an hour."""
        time.sleep(FOREVER_S)
        return "woke up"

    def get_reward(self) -> float:
        return 1.0 if self.count == self.target else 0.0


class AsyncEnv:
    """Reset and get_reward as `async def`."""

    def __init__(self) -> None:
        self.seen = ""

    async def reset(self, **row: Any) -> None:
        await asyncio.sleep(0)
        self.seen = str(row.get("prompt", ""))

    async def echo(self) -> str:
        """The prompt reset saw."""
        return self.seen

    async def get_reward(self) -> float:
        await asyncio.sleep(0)
        return float(len(self.seen))


class _RewardEnv:
    def reset(self, **row: Any) -> None:
        return None

    def noop(self) -> str:
        """Do nothing."""
        return ""


class NanReward(_RewardEnv):
    def get_reward(self) -> float:
        return float("nan")


class StringReward(_RewardEnv):
    def get_reward(self) -> float:
        return "1.0"  # type: ignore[return-value]


class SleepingReward(_RewardEnv):
    def get_reward(self) -> float:
        time.sleep(FOREVER_S)
        return 1.0


class InitRaises:
    def __init__(self) -> None:
        raise RuntimeError("cannot build this environment")

    def reset(self, **row: Any) -> None:
        return None


class ResetRaises(_RewardEnv):
    def reset(self, **row: Any) -> None:
        raise KeyError("missing column")


class ResetReturnsNumber(_RewardEnv):
    def reset(self, **row: Any) -> None:
        return 42  # type: ignore[return-value]
