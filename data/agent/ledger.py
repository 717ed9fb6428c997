"""The agentic task's environment (recipes/agent.yaml), written to TRL's `environment_factory`
contract: one instance per episode, `reset(**row)`, public methods are the tools, `get_reward()`.

The problem's quantities have names, `n1, n2, ...` in the order the problem states them; each
`calculate` call computes one step on named quantities or earlier results and names its result
`r1, r2, ...`; `answer` submits a name (or a number) as the answer. The model therefore never writes
a number it read: why, see docs/environments.md ("The shipped task"): a tiny model trained from
scratch for minutes on this box does not learn to copy multi-token numbers.
"""

from __future__ import annotations

from fractions import Fraction

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
       "/": lambda a, b: Fraction(a) / b}
MAX_NAME_CHARS = 32
"""Longest name or number `calculate`/`answer` read (a longer one is an error the model reads)."""


def _show(value: Fraction | int) -> str:
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


class Ledger:
    def __init__(self):
        self.values: dict[str, Fraction] = {}
        self.results = 0
        self.expected: Fraction | None = None
        self.submitted: Fraction | None = None

    def reset(self, quantities: list[int], answer: str, **row) -> None:
        self.values = {f"n{i + 1}": Fraction(q) for i, q in enumerate(quantities)}
        self.results = 0
        self.expected = Fraction(answer)
        self.submitted = None
        return None

    def _value(self, name: str, argument: str) -> Fraction:
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise ValueError(f"{argument} must be a name such as n1 or r1, got {name!r:.40}")
        if name not in self.values:
            raise ValueError(f"{argument}: no quantity named {name!r}; known: {', '.join(self.values)}")
        return self.values[name]

    def calculate(self, a: str, op: str, b: str) -> str:
        """Computes a op b; a and b are names: n1, n2, ... the problem's numbers in order, r1, r2, ... results.

        Args:
            a: The left operand's name.
            op: One of + - * /.
            b: The right operand's name.
        """
        left, right = self._value(a, "a"), self._value(b, "b")
        if op not in OPS:
            raise ValueError(f"op must be one of {' '.join(OPS)}, got {op!r:.40}")
        if op == "/" and right == 0:
            raise ValueError("division by zero")
        self.results += 1
        name = f"r{self.results}"
        self.values[name] = Fraction(OPS[op](left, right))
        return f"{name} = {_show(self.values[name])}"

    def answer(self, value: str) -> str:
        """Submits the answer: a name or a number.

        Args:
            value: A name such as r2, or a number.
        """
        text = str(value).strip()
        if len(text) > MAX_NAME_CHARS:
            raise ValueError(f"value too long ({len(text)} characters)")
        if text.lstrip("-").isdigit():
            self.submitted = Fraction(int(text))
        else:
            self.submitted = self._value(text, "value")
        return f"submitted {_show(self.submitted)}"

    def get_reward(self) -> float:
        return float(self.submitted is not None and self.submitted == self.expected)
