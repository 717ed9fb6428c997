r"""`code`: run the model's Python code against the sample's tests in a sandbox.

Data: a `tests` column per sample, a list of Python snippets, each usually one `assert`:

    {"prompt": "Write add(a, b) ...", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}

A snippet passes when it runs without raising, in the namespace the solution defined (snippets run
in order and may span several lines). A plain string instead of a list is one test.

The code is the last fenced ```python (or ```py) block of the completion, else the last unlabelled
fenced block, else the whole completion. One sandbox run per completion executes the solution and
then every test, so a response costs two interpreter starts (~0.35 s on the 2-core CPU box), not one
per test. A solution
that raises, loops (timeout), runs out of memory or breaks the sandbox's limits passes no test after
that point: its score is what it passed before (usually 0). A sandbox that does not start is not the
solution's failure: it raises `rewards.sandbox.SandboxError` (an `InfrastructureError`), and the pool
skips that call's samples instead of scoring them. See `rewards.sandbox` for the isolation.

What a policy cannot game. Inside the sandbox a harness process holds the report channel and a
random per-run token; the solution runs in a second interpreter the harness starts, which never
holds either (nor the test file: the tests reach the harness on its stdin). The harness is
non-dumpable, so the solution, although it runs as the same uid, cannot read its memory, stdin or
environment, attach to it, or open its stdout; it can kill it, which only loses its own score.
When a snippet's last statement is `assert A`, `assert not A` or `assert A <op> B` (one comparison:
== != < <= > >= is, is not, in, not in), with no assert before it, the solution's interpreter runs
the set-up lines, evaluates the sides that need its names and sends back their values as plain data
(None, bool, int, float, complex, str, bytes, and lists, tuples, sets, frozensets and dicts of those,
exact types), and the harness compares them. A side without names (a literal, `10**12 + 1`), or in a
one-statement test a side of literals and builtins only, is the expected value: the harness computes
it and never sends it, so the solution cannot learn it. Such a test (or `assert [not] A`) is a *value
test*. An object of any other type fails the test: an `__eq__` that always returns True, an `int`
subclass or a custom truthy object passes nothing.

What it does not guarantee: a *script test* (anything else: several asserts, a loop of asserts, a
comparison whose both sides use the solution's names) is judged, or both its sides computed, in the
solution's interpreter, so a solution that tampers with that interpreter (replaces `exec` or `eval`)
can fake it; `is_value_test` tells the two apart, and every test of `data/python/tasks.jsonl` is a
value test. In `assert A` and `assert not A` the solution's interpreter computes A's truth: a
boolean answer that a solution can guess, or fake by tampering when A is a predicate over its result
(`isinstance(f(), int)`); `assert A == expected` checks more. A value test checks only the
values its asserts compare: a solution that special-cases the inputs it sees in the tests (which it
can read when they are evaluated) still passes them, as any test suite allows.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ling_rl.reward.contract import RewardOutput, worker_cpus
from ling_rl.reward.registry import reward
from rewards.sandbox import SandboxError, SandboxLimits, SandboxUnavailable, available_isolation, run_python, unavailable_reason

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_LABELS = {"python", "py", "python3"}

MODES = ("fraction", "all_or_nothing")

# Two processes inside one sandbox. The harness (main.py) holds the report channel (its stdout, which
# the host reads) and the per-run token. It makes itself non-dumpable first, so processes of its uid
# cannot ptrace it or open its /proc files (memory, fds), then starts the solution's interpreter
# (_CHILD) with nothing of its own: no token, no report fd, no expected values. The solution's
# interpreter evaluates expressions and sends back plain data; the harness decides each verdict.
# The test data reaches the harness on its stdin, never as a file under /code the solution could read.
_HARNESS = r"""import ast, builtins, ctypes, json, operator, os, select, subprocess, sys


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
        sys.exit("code harness: prctl(PR_SET_DUMPABLE, 0) failed with errno %d" % ctypes.get_errno())
    request = json.loads(sys.stdin.readline())
    token, out = request["token"], sys.stdout

    def report(*fields):
        out.write(" ".join([token] + [str(f) for f in fields]) + "\n")
        out.flush()

    plans = [plan(test) for test in request["tests"]]
    report("ready")
    child = subprocess.Popen([sys.executable, "-I", "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             close_fds=True)
    try:
        child.stdin.write((json.dumps({"solution": request["solution"], "steps": [p["step"] for p in plans]}) + "\n").encode())
        child.stdin.close()
    except OSError:
        pass  # it died already: no response will come
    lines = responses(child)
    first = next_response(lines, -1)
    if first is None or first.get("ok") is not True:
        report("solution-failed")
    else:
        for index, p in enumerate(plans):
            response = next_response(lines, index)
            if response is None:
                break
            report(index, int(verdict(p, response)))
    child.kill()
    child.wait()


OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
       ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not, ast.In: lambda a, b: a in b,
       ast.NotIn: lambda a, b: a not in b}


def plan(test):
    try:
        return plan_of(test)
    except Exception:  # unparsable (null bytes, too deep): run as a script, where it fails as it would
        return {"step": {"script": test}}


def plan_of(test):
    # A test whose last statement is `assert A`, `assert not A` or `assert A <op> B` (and no assert
    # before it) is a value test: the solution's interpreter evaluates only the sides that need its
    # names; sides made of literals and builtins (the expected values) are evaluated here and never
    # sent. Anything else is a script test, whose verdict the solution's interpreter reports.
    body = ast.parse(test).body
    if not body or not isinstance(body[-1], ast.Assert) or any(isinstance(n, ast.Assert) for s in body[:-1] for n in ast.walk(s)):
        return {"step": {"script": test}}
    expr = body[-1].test
    if isinstance(expr, ast.Compare) and len(expr.ops) == 1 and type(expr.ops[0]) in OPS:
        sides, op = [expr.left, expr.comparators[0]], OPS[type(expr.ops[0])]
    elif isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        sides, op = [expr.operand], operator.not_
    else:
        sides, op = [expr], operator.truth
    local, remote = [], []
    for side in sides:
        names = {n.id for n in ast.walk(side) if isinstance(n, ast.Name)}
        # No names at all (a literal like 1 or 10**12 + 1), or only builtins in a one-statement
        # test (set-up lines could rebind a builtin's name): the expected value, computed here.
        if not names or (len(body) == 1 and names <= set(dir(builtins))):
            local.append(side)
        else:
            local.append(None)
            remote.append(ast.unparse(side))
    setup = ast.unparse(ast.Module(body=body[:-1], type_ignores=[]))
    return {"step": {"setup": setup, "exprs": remote}, "sides": local, "op": op}


def verdict(p, response):
    try:
        if response.get("ok") is not True:
            return False
        if "op" not in p:
            return True
        remote = [decode(v) for v in response["values"]]
        if len(remote) != sum(s is None for s in p["sides"]):
            return False
        values = []
        for side in p["sides"]:
            if side is None:
                values.append(remote.pop(0))
            else:
                values.append(eval(compile(ast.Expression(side), "expected", "eval"), {"__builtins__": builtins}))
        return bool(p["op"](*values))
    except Exception:
        return False


def decode(x):
    # Plain data only: every value built here is of a builtin type, so comparing it runs no solution code.
    tag = x[0]
    if tag == "none":
        return None
    if tag == "bool" and type(x[1]) is bool:
        return x[1]
    if tag == "int":
        return int(x[1], 16)
    if tag == "float":
        return float.fromhex(x[1])
    if tag == "complex":
        return complex(float.fromhex(x[1]), float.fromhex(x[2]))
    if tag == "str" and type(x[1]) is str:
        return x[1]
    if tag == "bytes":
        return bytes.fromhex(x[1])
    if tag in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(v) for v in x[1])
    if tag == "dict":
        return {decode(k): decode(v) for k, v in x[1]}
    raise ValueError("not plain data: %r" % (tag,))


def responses(child):
    # Lines from the solution's interpreter until it exits (a detached descendant may hold the pipe).
    fd, buffer = child.stdout.fileno(), b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line
        if select.select([fd], [], [], 0.05)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            buffer += chunk
        elif child.poll() is not None and not select.select([fd], [], [], 0)[0]:
            return


def next_response(lines, index):
    # The first well-formed response for this step; anything else the solution printed is skipped.
    for line in lines:
        try:
            response = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(response) is dict and response.get("step") == index:
            return response
    return None
"""

# The solution's interpreter: runs the solution (with __name__ != "__main__", so its own demo or
# `input()` block does not run), then each step; answers on a private dup of its stdout, its prints
# going to stderr. Nothing here is trusted: the harness accepts only plain data from it.
_CHILD = r"""import json, os, sys, traceback


def encode(value):
    kind = type(value)
    if value is None:
        return ["none"]
    if kind is bool:
        return ["bool", value]
    if kind is int:
        return ["int", hex(value)]
    if kind is float:
        return ["float", value.hex()]
    if kind is complex:
        return ["complex", value.real.hex(), value.imag.hex()]
    if kind is str:
        return ["str", value]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind in (list, tuple, set, frozenset):
        return [kind.__name__, [encode(v) for v in value]]
    if kind is dict:
        return ["dict", [[encode(k), encode(v)] for k, v in value.items()]]
    raise TypeError("a test compared a %s: only None, bool, int, float, complex, str, bytes and lists, tuples, "
                    "sets, frozensets and dicts of them are plain data" % kind.__name__)


def main():
    request = json.loads(sys.stdin.readline())
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the solution's prints go to stderr, not between the responses
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)

    def send(response):
        channel.write(json.dumps(response) + "\n")
        channel.flush()

    namespace = {"__name__": "solution"}
    try:
        exec(compile(request["solution"], "solution.py", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        send({"step": -1, "ok": False})
        return
    send({"step": -1, "ok": True})
    for index, step in enumerate(request["steps"]):
        try:
            if "script" in step:
                exec(compile(step["script"], "test_%d" % index, "exec"), namespace)
                send({"step": index, "ok": True})
                continue
            exec(compile(step["setup"], "test_%d" % index, "exec"), namespace)
            values = [encode(eval(compile(e, "test_%d" % index, "eval"), namespace)) for e in step["exprs"]]
            send({"step": index, "ok": True, "values": values})
        except BaseException:
            traceback.print_exc()
            send({"step": index, "ok": False})


main()
"""


@dataclass(frozen=True)
class CodeResult:
    """The outcome of one completion's run."""

    passed: list[bool]
    """Per test."""
    timed_out: bool
    solution_failed: bool
    """The solution itself raised (syntax error, exception, MemoryError) before any test ran."""


def extract_code(completion: str) -> str:
    r"""The Python code of a completion (see the module docstring for the rule).

    >>> extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.")
    'def f():\n    return 1\n'
    >>> extract_code("x = 1")
    'x = 1'
    """
    blocks = _FENCE.findall(completion)
    python = [body for label, body in blocks if label.lower() in _PYTHON_LABELS]
    if python:
        return python[-1]
    plain = [body for label, body in blocks if not label]
    return plain[-1] if plain else completion


def is_value_test(test: str) -> bool:
    """Whether this is a value test (see the module docstring): the harness decides its verdict from
    plain values, and the solution never sees the expected side of its comparison. False: the
    solution's interpreter reports the verdict or computes both sides, and tampering with it can fake it.

    >>> [is_value_test(t) for t in ["assert add(1, 2) == 3", "x = f()\\nassert not x", "y = 4\\nassert f() == y",
    ...                             "for i in range(3): assert f(i)"]]
    [True, True, False, False]
    """
    plan = _HARNESS_FUNCTIONS["plan"](test)
    return "op" in plan and (len(plan["sides"]) == 1 or any(side is not None for side in plan["sides"]))


_HARNESS_FUNCTIONS: dict[str, Any] = {}
exec(compile(_HARNESS, "code_harness", "exec"), _HARNESS_FUNCTIONS)  # the same `plan` the sandbox runs


def run_tests(code: str, tests: list[str], limits: SandboxLimits) -> CodeResult:
    """Run `code` and then `tests` in one sandbox; every test not reported as passed failed.
    Raises `SandboxError` when the sandbox did not start (the code never ran)."""
    token = secrets.token_hex(16)
    program = f"{_HARNESS}\nCHILD = {_CHILD!r}\n\nmain()\n"
    request = json.dumps({"token": token, "solution": code, "tests": list(tests)})
    result = run_python({"main.py": program}, limits, stdin=request + "\n")
    passed = [False] * len(tests)
    solution_failed = ready = False
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == token and parts[1] == "ready":
            ready = True
        elif len(parts) == 2 and parts[0] == token and parts[1] == "solution-failed":
            solution_failed = True
        elif len(parts) == 3 and parts[0] == token and parts[1].isdigit() and int(parts[1]) < len(tests):
            passed[int(parts[1])] = parts[2] == "1"
    if not ready:
        # The harness reports "ready" before the solution's interpreter exists: without it the
        # harness itself failed (or the run was killed before the solution started).
        raise SandboxError(f"the code harness did not start (exit status {result.returncode}): "
                           f"{result.stderr.strip().splitlines()[-1:] or 'no message'}")
    return CodeResult(passed=passed, timed_out=result.timed_out, solution_failed=solution_failed)


@reward("code")
class Code:
    """Reward = fraction of the sample's `tests` the completion's code passes (`mode: fraction`), or
    1.0 only when all pass (`mode: all_or_nothing`). Rows without tests are skipped (None).

    Args: `mode`; `timeout_s` (wall clock per completion, also its CPU limit), `memory_mb` (address
    space), `max_processes`, `max_file_mb`: the sandbox limits; `max_parallel`: sandboxes run at
    once in one call (default: the CPUs Ray gave this reward worker, `cluster.reward.num_cpus`, at least 1). The recipe's `timeout_s` for the plugin must cover a
    call: about ceil(completions per call / max_parallel) * timeout_s.

    Metrics: `all_passed`, `timed_out` and `solution_failed` (fractions of scored completions).

    Instantiating it checks that a sandbox is available (`rewards.sandbox.SandboxUnavailable`
    otherwise), so a machine without one fails when the reward workers start, not mid-run.

    >>> code = Code(timeout_s=5)
    >>> out = code(prompts=["?"] * 2, completions=["```python\\ndef add(a, b):\\n    return a + b\\n```", "def add(a, b): return a - b"],
    ...            tests=[["assert add(1, 2) == 3", "assert add(0, 0) == 0"]] * 2)
    >>> out.scores
    [1.0, 0.5]
    """

    def __init__(
        self,
        mode: str = "fraction",
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        max_processes: int = 32,
        max_file_mb: int = 10,
        max_parallel: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"code reward: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if timeout_s <= 0 or memory_mb < 64 or max_processes < 1 or max_file_mb < 1:
            raise ValueError("code reward: timeout_s must be > 0, memory_mb >= 64, max_processes and max_file_mb >= 1")
        if available_isolation() is None:
            raise SandboxUnavailable(
                f"code reward: no sandbox available ({unavailable_reason()}); install bubblewrap (`apt-get install "
                "-y bubblewrap`, as scripts/setup.sh does); model code is never run unsandboxed"
            )
        self.mode = mode
        self.limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb, max_processes=max_processes,
                                    max_file_mb=max_file_mb)
        # The CPUs this reward worker was given, not the node's: several workers share a node.
        self.max_parallel = max_parallel or worker_cpus()

    def __call__(self, prompts: list[str], completions: list[str], tests: list[Any], **kwargs: Any) -> RewardOutput:
        jobs = [(i, extract_code(c), _as_tests(t)) for i, (c, t) in enumerate(zip(completions, tests))]
        jobs = [(i, code, t) for i, code, t in jobs if t]
        scores: list[float | None] = [None] * len(completions)
        # Threads suffice: each waits on its sandbox process and releases the GIL meanwhile.
        with ThreadPoolExecutor(max_workers=self.max_parallel) as executor:
            results = list(executor.map(lambda job: run_tests(job[1], job[2], self.limits), jobs))
        for (i, _, _), result in zip(jobs, results):
            fraction = sum(result.passed) / len(result.passed)
            scores[i] = fraction if self.mode == "fraction" else float(fraction == 1.0)
        if not results:
            return RewardOutput(scores=scores)
        n = len(results)
        metrics = {
            "all_passed": sum(all(r.passed) for r in results) / n,
            "timed_out": sum(r.timed_out for r in results) / n,
            "solution_failed": sum(r.solution_failed for r in results) / n,
        }
        return RewardOutput(scores=scores, metrics=metrics)


def _as_tests(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list | tuple) and all(isinstance(t, str) for t in value):
        return list(value)
    raise ValueError(f"code reward: `tests` must be a list of Python snippets (strings) or one string, got {value!r:.200}")
