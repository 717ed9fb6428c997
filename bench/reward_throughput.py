"""Reward throughput (samples/s) of the `math`, `format`, `length` and `code` plugins, in one process.

    python bench/reward_throughput.py [--math 512] [--code 32] [--repeats 3]

Each plugin is called directly (as a reward worker would, in the main thread), on a batch of
realistic completions: math answers in mixed forms (plain numbers settle without sympy, LaTeX,
intervals and units go through math-verify), groups of 8 for `length` (with math correctness),
and right, half-right and broken solutions of data/python/tasks.jsonl for `code` (one sandbox per
completion, `max_parallel` at once). Prints the best of `--repeats` runs per plugin (the first
math call also pays sympy's import and caches; the best run is the steady state a worker reaches).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, this file's folder is sys.path[0]; the `rewards` package is looked up from the
# repository root (before any install of the project).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rewards.code import Code  # noqa: E402
from rewards.format import Format  # noqa: E402
from rewards.length import Length  # noqa: E402
from rewards.math import math_reward  # noqa: E402

# completion template, gold; {v} is filled with the right value or a wrong one.
MATH_FORMS = [
    ("4 + 8 = 12. The answer is {v}.", "12"),
    (r"so the result is \boxed{{{v}}}", r"\frac{1}{2}"),
    (r"The interval is \boxed{{{v}}}", "[1,3)"),
    ("The answer is {v} apples.", "7"),
    (r"Hence \boxed{{{v}}}", r"2\sqrt{3}"),
    ("<answer>{v}</answer>", "0.25"),
]
RIGHT = {"12": "12", r"\frac{1}{2}": "0.5", "[1,3)": "[1, 3)", "7": "7", r"2\sqrt{3}": r"\sqrt{12}", "0.25": r"\frac{1}{4}"}
WRONG = {"12": "13", r"\frac{1}{2}": "0.75", "[1,3)": "(1, 3]", "7": "8", r"2\sqrt{3}": r"3\sqrt{2}", "0.25": "1/5"}


def math_batch(n: int, rng: random.Random) -> tuple[list[str], list[str]]:
    completions, golds = [], []
    for i in range(n):
        template, gold = MATH_FORMS[i % len(MATH_FORMS)]
        value = RIGHT[gold] if rng.random() < 0.5 else WRONG[gold]
        completions.append(template.format(v=value))
        golds.append(gold)
    return completions, golds


def code_batch(n: int) -> tuple[list[str], list[list[str]]]:
    tasks = [json.loads(line) for line in (ROOT / "data/python/tasks.jsonl").read_text().splitlines()]
    by_name = {t["entry_point"]: t for t in tasks}
    solutions = {  # right, partly right, and broken answers to a few tasks
        "add": "```python\ndef add(a, b):\n    return a + b\n```",
        "is_even": "```python\ndef is_even(n):\n    return n % 2 == 1\n```",
        "factorial": "```python\nimport math\ndef factorial(n):\n    return math.factorial(n)\n```",
        "fib": "```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n```",
        "gcd": "```python\ndef gcd(a, b) return a\n```",
        "is_prime": "```python\ndef is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))\n```",
        "flatten": "```python\ndef flatten(xss):\n    return [x for xs in xss for x in xs]\n```",
        "rotate": "```python\ndef rotate(xs, k):\n    return xs[-k:] + xs[:-k]\n```",
    }
    names = list(solutions)
    completions = [solutions[names[i % len(names)]] for i in range(n)]
    tests = [by_name[names[i % len(names)]]["tests"] for i in range(n)]
    return completions, tests


def best_rate(fn: Callable[[], Any], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--math", type=int, default=512, help="completions for math, format and length")
    parser.add_argument("--code", type=int, default=32, help="completions for code")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-parallel", type=int, default=os.cpu_count() or 1, help="sandboxes at once (code)")
    args = parser.parse_args()
    rng = random.Random(0)

    completions, golds = math_batch(args.math, rng)
    prompts = ["?"] * len(completions)
    rates: dict[str, float] = {}
    rates["math"] = best_rate(lambda: math_reward(prompts=prompts, completions=completions, answer=golds), len(completions), args.repeats)

    fmt = Format(mode="instant", require="none")
    think_mix = [("<think>hmm</think> " + c) if i % 4 == 0 else c for i, c in enumerate(completions)]
    rates["format"] = best_rate(lambda: fmt(completions=think_mix), len(think_mix), args.repeats)

    length = Length(correctness="math")
    ids = [[1] * rng.randint(8, 256) for _ in completions]
    groups = [range(s, min(s + 8, len(completions))) for s in range(0, len(completions), 8)]

    def score_groups() -> None:  # group-level: one call per group of 8, as the pool does
        for g in groups:
            length(completions=[completions[i] for i in g], completion_ids=[ids[i] for i in g], answer=[golds[i] for i in g])

    rates["length"] = best_rate(score_groups, len(completions), args.repeats)

    code = Code(timeout_s=5, max_parallel=args.max_parallel)
    code_completions, tests = code_batch(args.code)
    rates["code"] = best_rate(lambda: code(prompts=["?"] * len(tests), completions=code_completions, tests=tests),
                              len(tests), args.repeats)

    print(f"{'plugin':8} samples/s   (cpus: {os.cpu_count()}, code max_parallel: {args.max_parallel})")
    for name, rate in rates.items():
        print(f"{name:8} {rate:10.1f}")


if __name__ == "__main__":
    main()
