"""The agentic task's tool (recipes/agent.yaml): one arithmetic step on two integers.

Why not the built-in `calculator(expression)`: with the tiny byte-level BPE tokenizer a number is a
different token sequence inside a JSON string (`"4821*37"`: `4`, `82`, `1`) than in the problem's
prose (` 4821`: `Ġ4`, `82`, `1`), and a tool result printed alone (`178377` after a newline) differs
from the same number in "The answer is 178377.". A tiny model trained from scratch would have to
learn that mapping before it could copy a single operand. Here every number the model copies is
written the same way where it reads it and where it writes it: JSON integers follow `": "`, and the
result comes back as `a op b = result`, each number after a space.
"""

from __future__ import annotations

from ling_rl.environments.builtin import calculator

OPS = ("+", "-", "*", "/")
MAX_OPERAND = 10**15
"""Largest operand magnitude: the task's numbers stay below a billion; bigger ones are an error the
model reads, not work the tool does."""


def calculate(a: int, op: str, b: int) -> str:
    """Computes a op b exactly.

    Args:
        a: The left operand.
        op: One of + - * /.
        b: The right operand.
    """
    for name, operand in (("a", a), ("b", b)):
        if isinstance(operand, bool) or not isinstance(operand, int):
            raise TypeError(f"{name} must be an integer, got {operand!r}")
        if abs(operand) > MAX_OPERAND:
            raise ValueError(f"{name} is too large (at most {MAX_OPERAND} in magnitude)")
    if op not in OPS:
        raise ValueError(f"op must be one of {' '.join(OPS)}, got {op!r}")
    return f"{a} {op} {b} = {calculator(f'{a}{op}{b}')}"
