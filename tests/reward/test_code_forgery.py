"""`code` reward against a policy that games it: hostile solutions must score what they deserve.

Each solution below tries one way to pass tests it does not solve (forging the report, reading the
expected values, objects equal to anything, tampering with its interpreter). The tests are chosen so
that an attack that worked shows as a passed test; the expected lists are what the honest part of
the solution earns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards import sandbox
from rewards.code import Code, run_tests
from rewards.sandbox import SandboxLimits

LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=512)
ONE = "def f():\n    return 1\n"
TESTS = ["assert f() == 1", "assert f() == 2", "assert f() == 3"]
"""f() == 1 is right: an honest `ONE` earns [True, False, False]."""

pytestmark = pytest.mark.skipif(sandbox.available_isolation() is None, reason="no sandbox here (install bubblewrap)")

# Finds every secret-looking string (32 hex digits) and every writable report channel it can reach:
# the frames' locals (the old harness kept `token` and `out` there), all objects gc knows, the
# harness's /proc files, the inherited file descriptors; then writes pass lines for every test
# behind every candidate token to every channel, and exits before anything else is reported.
FORGER = r'''
import gc, os, re, sys
HEX = re.compile(r"^[0-9a-f]{32}$")
tokens, channels = set(), []
frame = sys._getframe()
while frame is not None:
    for value in list(frame.f_locals.values()):
        if isinstance(value, str) and HEX.match(value):
            tokens.add(value)
        elif hasattr(value, "write") and hasattr(value, "flush"):
            channels.append(value)
    frame = frame.f_back
for obj in gc.get_objects():
    if isinstance(obj, str) and HEX.match(obj):
        tokens.add(obj)
    elif isinstance(obj, dict):
        for value in list(obj.values()):
            if isinstance(value, str) and HEX.match(value):
                tokens.add(value)
parent = os.getppid()
for name in ("environ", "fd/0"):
    try:
        tokens.update(re.findall(r"[0-9a-f]{32}", open("/proc/%d/%s" % (parent, name), errors="replace").read(1 << 20)))
    except OSError:
        pass
try:
    channels.append(open("/proc/%d/fd/1" % parent, "w"))
except OSError:
    pass
channels += [sys.stdout, sys.__stdout__]
lines = "".join("%s %d 1\n" % (t, i) for t in tokens for i in range(3))
for channel in channels:
    try:
        channel.write(lines)
        channel.flush()
    except Exception:
        pass
for fd in range(1, 32):
    try:
        os.write(fd, lines.encode())
    except OSError:
        pass
os._exit(0)
'''


def test_forged_report_scores_nothing() -> None:
    """The issue's reproducer: the old harness ran the solution inside the function holding the token
    and the report stream, and this forger scored 1.0 on three tests, two of them wrong."""
    result = run_tests(ONE + FORGER, TESTS, LIMITS)
    assert result.passed == [False, False, False]  # it exits before its f() is ever tested
    assert result.solution_failed


def test_always_equal_objects_pass_nothing() -> None:
    always = (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
        "        return False\n    def __bool__(self):\n        return True\n    __hash__ = object.__hash__\n"
        "class AnyInt(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "class AnyStr(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "def f(kind=0):\n    return [Anything(), AnyInt(5), AnyStr('x')][kind]\n"
    )
    tests = ["assert f(0) == 3", "assert f(1) == 3", "assert f(2) == 'y'", "assert f(0)", "assert [f(1)] == [3]",
             "x = f(0)\nassert x == 3", "assert 3 == f(0)"]
    assert run_tests(always, tests, LIMITS).passed == [False] * len(tests)
    # Plain values of the right type still compare as Python compares them.
    plain = "def f(kind=0):\n    return [3, 3.0, (1, [2]), {'a': {1}}, None, b'x'][kind]\n"
    tests = ["assert f(0) == 3", "assert f(1) == 3", "assert f(2) == (1, [2])", "assert f(2) == [1, [2]]",
             "assert f(3) == {'a': {1}}", "assert f(4) is None", "assert f(5) == b'x'", "assert not f(4)"]
    assert run_tests(plain, tests, LIMITS).passed == [True, True, True, False, True, True, True, True]


def test_expected_values_are_out_of_the_solutions_reach() -> None:
    """The expected side of a test is evaluated by the harness, never sent to the solution's
    interpreter, and the tests are in no file it can read: a solution looking for them finds nothing."""
    snoop = (
        "import gc, glob, os, re\ntext = ''\nfor path in glob.glob('/code/*') + glob.glob('*'):\n    try:\n"
        "        text += open(path).read()\n    except OSError:\n        pass\n"
        "for obj in gc.get_objects():\n    if isinstance(obj, str):\n        text += obj\n"
        "found = re.findall(r'SECRET-[0-9]+', text)\ndef f():\n    return found[0] if found else None\n"
    )
    assert run_tests(snoop, ["assert f() == 'SECRET-12345'"], LIMITS).passed == [False]


def test_the_harness_process_is_out_of_reach() -> None:
    """The solution runs as the harness's uid in its pid namespace, yet cannot read the harness's
    memory, stdin or environment, attach to it, or open its report stream."""
    probe = (
        "import ctypes, os\nparent = os.getppid()\ngot = []\n"
        "for name, mode in (('mem', 'rb'), ('environ', 'rb'), ('fd/0', 'rb'), ('fd/1', 'wb')):\n    try:\n"
        "        open('/proc/%d/%s' % (parent, name), mode)\n        got.append(name)\n    except OSError:\n        pass\n"
        "libc = ctypes.CDLL(None)\nif libc.ptrace(16, parent, None, None) == 0:\n    got.append('ptrace')\n"
        "def f():\n    return got\n"
    )
    assert run_tests(probe, ["assert f()"], LIMITS).passed == [False]


HOSTILE = {
    "prints fake report lines": (
        ONE + "import sys\nfor i in range(3):\n    print('0' * 32, i, 1)\n    print('%s %d 1' % ('f' * 32, i), file=sys.__stdout__)\n",
        [True, False, False],
    ),
    "writes fake responses to every fd": (
        ONE + "import json, os\nlines = ''.join(json.dumps({'step': i, 'ok': True}) + '\\n' for i in range(-1, 3))\n"
        "lines += ''.join(json.dumps({'step': i, 'ok': True, 'values': []}) + '\\n' for i in range(3))\n"
        "for fd in range(1, 32):\n    try:\n        os.write(fd, lines.encode())\n    except OSError:\n        pass\n"
        "os._exit(0)\n",
        [False, False, False],
    ),
    "replaces eval, exec, compile and print": (
        ONE + "import builtins\nbuiltins.eval = lambda *a, **k: True\nbuiltins.exec = lambda *a, **k: None\n"
        "builtins.compile = lambda *a, **k: None\nbuiltins.print = lambda *a, **k: None\nimport sys\n"
        "sys.stdout = sys.stderr\n",
        [True, False, False],  # True == 1: what a solution answering True to everything earns
    ),
    "exits early with status 0": (ONE + "import os\nos._exit(0)\n", [False, False, False]),
    "raises SystemExit(0)": (ONE + "raise SystemExit(0)\n", [False, False, False]),
    "kills the harness": (ONE + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", [False, False, False]),
    "hooks AssertionError and tracing": (
        ONE + "import builtins, sys\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
        "sys.settrace(lambda *a: None)\nsys.excepthook = lambda *a: None\n",
        [True, False, False],
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_solution_scores_what_it_deserves(name: str) -> None:
    solution, deserved = HOSTILE[name]
    assert run_tests(solution, TESTS, LIMITS).passed == deserved, name


def test_shipped_tasks_are_value_tests() -> None:
    """Every test of the shipped tasks is one assert, so its verdict is the harness's, not the
    solution interpreter's (see docs/rewards.md: script tests can be faked)."""
    from rewards.code import is_value_test

    rows = [json.loads(line) for line in (Path(__file__).resolve().parents[2] / "data/python/tasks.jsonl").read_text().splitlines()]
    tests = [t for row in rows for t in row["tests"]]
    assert tests and all(is_value_test(t) for t in tests), [t for t in tests if not is_value_test(t)]
    assert not is_value_test("for i in range(3):\n    assert f(i) == i")


def test_reward_scores_the_forger_zero() -> None:
    out = Code(timeout_s=3)(prompts=["?"] * 2, completions=[ONE + FORGER, ONE], tests=[TESTS] * 2)
    assert out.scores == [0.0, pytest.approx(1 / 3)]


def test_expected_literal_stays_hidden_after_set_up_lines() -> None:
    """With set-up lines, a literal expected side is still the harness's: a solution that makes its
    interpreter's `eval` answer the same for every side cannot make `x == 2` hold."""
    tamper = ONE + "import builtins\nbuiltins.eval = lambda *a, **k: 7\n"
    assert run_tests(tamper, ["x = f()\nassert x == 2", "x = f()\nassert x == 7"], LIMITS).passed == [False, True]


def test_unparsable_tests_fail_as_tests() -> None:
    """The harness plans every test before the solution starts; a test it cannot parse is that
    test's failure, not a harness that did not start (an infrastructure error)."""
    tests = ["assert f() == 1", "assert f(\x00)", "assert f(", "(" * 300 + ")" * 300]
    assert run_tests(ONE, tests, LIMITS).passed == [True, False, False, False]
