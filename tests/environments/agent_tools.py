"""Tools that misbehave, for the real runs of tests/test_agent.py (each a plain typed function
with a docstring, as TRL's `tools=[...]` takes them)."""

import os
import time


def boom() -> str:
    """
    A tool that always raises.
    """
    raise ValueError("boom: this tool always fails")


def hang() -> str:
    """
    A tool that never returns.
    """
    time.sleep(3600)
    return "never"


def die() -> str:
    """
    A tool whose process exits in the middle of the call.
    """
    os._exit(3)
