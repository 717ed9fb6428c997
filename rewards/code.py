r"""`code`: run the model's Python code against the sample's tests in a sandbox.

Data: a `tests` column per sample, a list of Python snippets, each usually one `assert`:

    {"prompt": "Write add(a, b) ...", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}

A snippet passes when it runs without raising, in the namespace the solution defined (snippets run
in order and may span several lines). A plain string instead of a list is one test.

The code is the last fenced ```python (or ```py) block of the completion, else the last unlabelled
fenced block, else the whole completion. One sandbox run per completion executes the solution and
then every test, and a small harness reports each test's outcome on stdout, so a response costs
one interpreter start (~0.2 s), not one per test. A solution that raises, loops (timeout), runs out
of memory or breaks the sandbox's limits passes no test after that point: its score is what it
passed before (usually 0). A sandbox that does not start is not the solution's failure: it raises
`rewards.sandbox.SandboxError` (an `InfrastructureError`), and the pool skips that call's samples
instead of scoring them. See `rewards.sandbox` for the isolation.

The harness only protects the host, not the score: a program written to forge the report (it runs
in the same interpreter) could, so it prints each result behind a random per-run token the program
never sees in a file, its arguments or its environment.
"""

from __future__ import annotations

import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.sandbox import SandboxLimits, SandboxUnavailable, available_isolation, run_python, unavailable_reason

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_LABELS = {"python", "py", "python3"}

MODES = ("fraction", "all_or_nothing")

# The harness: solution, then each test, in one namespace. Results go to the stdout captured before
# the solution runs (it may replace sys.stdout), behind the token read from stdin. The solution runs
# with __name__ != "__main__", so its own demo/`input()` block does not run.
_HARNESS = """\
import sys, traceback

def _run():
    token = sys.stdin.readline().strip()
    out = sys.stdout
    namespace = {"__name__": "solution"}
    try:
        exec(compile(SOLUTION, "solution.py", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        out.write(token + " solution-failed\\n")
        out.flush()
        return
    for index, test in enumerate(TESTS):
        try:
            exec(compile(test, "test_%d" % index, "exec"), namespace)
            passed = 1
        except BaseException:
            traceback.print_exc()
            passed = 0
        out.write("%s %d %d\\n" % (token, index, passed))
        out.flush()
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


def run_tests(code: str, tests: list[str], limits: SandboxLimits) -> CodeResult:
    """Run `code` and then `tests` in one sandbox; every test not reported as passed failed.
    Raises `SandboxError` when the sandbox did not start (the code never ran)."""
    token = secrets.token_hex(16)
    program = f"{_HARNESS}\nSOLUTION = {code!r}\nTESTS = {list(tests)!r}\n_run()\n"
    result = run_python({"main.py": program}, limits, stdin=token + "\n")
    passed = [False] * len(tests)
    solution_failed = False
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == token and parts[1] == "solution-failed":
            solution_failed = True
        elif len(parts) == 3 and parts[0] == token and parts[1].isdigit() and int(parts[1]) < len(tests):
            passed[int(parts[1])] = parts[2] == "1"
    return CodeResult(passed=passed, timed_out=result.timed_out, solution_failed=solution_failed)


@reward("code")
class Code:
    """Reward = fraction of the sample's `tests` the completion's code passes (`mode: fraction`), or
    1.0 only when all pass (`mode: all_or_nothing`). Rows without tests are skipped (None).

    Args: `mode`; `timeout_s` (wall clock per completion, also its CPU limit), `memory_mb` (address
    space), `max_processes`, `max_file_mb`: the sandbox limits; `max_parallel`: sandboxes run at
    once in one call (default: the CPU count). The recipe's `timeout_s` for the plugin must cover a
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
        self.max_parallel = max_parallel or os.cpu_count() or 1

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
