"""Built-in tools, by short name in `environment.tools` (the `TOOLS` registry): `calculator` and
`python`. Plain typed functions with Google-style docstrings, as TRL's tools are, so their JSON
schemas come from `transformers.utils.get_json_schema` like any user's tool. A tool's failure the
model should read (a bad expression) is an exception, which the episode's process turns into
TRL's `{"error": ...}` result; a sandbox that cannot start is an `InfrastructureError`."""

from __future__ import annotations

import ast
import decimal
import operator
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from ling_rl.registry import Registry

TOOLS: Registry[Callable[..., Any]] = Registry("built-in tool")

MAX_EXPRESSION_CHARS = 1000
"""Longest expression `calculator` reads: bounds parsing and every literal's size."""
MAX_RESULT_BITS = 4096
"""Largest numerator or denominator (in bits, ~1233 decimal digits) any step of `calculator` may
produce; a power is refused before it is computed when its result would pass this."""
MAX_DEPTH = 100
"""Deepest nesting of operations `calculator` evaluates (its recursion stays far from Python's limit)."""
SIGNIFICANT_DIGITS = 12
"""Digits of a non-integer `calculator` result."""

PYTHON_TIMEOUT_S = 10.0
"""Wall-clock limit of one `python` call's program (below `environment.tool_timeout_s`'s default 30)."""
PYTHON_STDERR_TAIL_CHARS = 1000
"""Characters of stderr `python` returns after a failing program (its last lines, where the error is)."""

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}

Number = Fraction | float
"""Exact (Fraction) until a fractional power makes a result irrational (float)."""


@TOOLS.register("calculator")
def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression exactly and returns the result.

    Args:
        expression: Integers and decimals with + - * / // % ** and parentheses, e.g. "(4821 * 37 - 9052) / 4".
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression too long ({len(expression)} characters, at most {MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"not an arithmetic expression: {getattr(e, 'msg', None) or e}") from None
    return _format(_evaluate(tree.body, expression.strip(), 0))


def _evaluate(node: ast.AST, source: str, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise ValueError(f"expression nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return _bounded(Fraction(node.value))
    if isinstance(node, ast.Constant) and type(node.value) is float:
        return _decimal_literal(ast.get_source_segment(source, node) or repr(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, source, depth + 1))
    if isinstance(node, ast.BinOp) and (type(node.op) in _BINARY or isinstance(node.op, ast.Pow)):
        left, right = _evaluate(node.left, source, depth + 1), _evaluate(node.right, source, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("result too large") from None
    shown = ast.get_source_segment(source, node) or type(node).__name__
    raise ValueError(f"not allowed in an arithmetic expression: {shown[:80]!r} (only numbers, + - * / // % ** and parentheses)")


def _decimal_literal(text: str) -> Fraction:
    """A decimal literal exactly (0.1 is 1/10, not the float nearest to it), its exponent checked
    before 10**exponent is computed (`1e999999999` is refused at once)."""
    value = decimal.Decimal(text)
    if abs(value.as_tuple().exponent) * 10 // 3 > MAX_RESULT_BITS:  # 10**e has ~3.32 e bits
        raise ValueError(f"number too large or too precise: {text[:40]}")
    return _bounded(Fraction(value))


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(exponent, Fraction) and exponent.denominator == 1 and isinstance(base, Fraction):
        if base == 0 and exponent < 0:
            raise ValueError("division by zero (0 to a negative power)")
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if abs(base) != 1 and base != 0 and (size - 1) * abs(exponent) > MAX_RESULT_BITS:
            raise ValueError(f"result too large (more than {MAX_RESULT_BITS} bits)")
        return _bounded(base ** int(exponent))
    try:
        value = float(base) ** float(exponent)
    except ZeroDivisionError:
        raise ValueError("division by zero (0 to a negative power)") from None
    except OverflowError:
        raise ValueError("result too large") from None
    if isinstance(value, complex):
        raise ValueError("not a real number (a negative number to a fractional power)")
    return value


def _bounded(value: Number) -> Number:
    if isinstance(value, Fraction) and max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_RESULT_BITS:
        raise ValueError(f"result too large (more than {MAX_RESULT_BITS} bits)")
    return value


def _format(value: Number) -> str:
    """An integer exactly; anything else to SIGNIFICANT_DIGITS digits, trailing zeros dropped."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return str(value.numerator)
    with decimal.localcontext() as ctx:
        ctx.prec = SIGNIFICANT_DIGITS
        if isinstance(value, Fraction):
            dec = decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator)
        else:
            dec = +decimal.Decimal(value)
        if not dec.is_finite():
            raise ValueError("result is not a finite number (too large)")
        if dec == dec.to_integral_value() and dec.adjusted() < SIGNIFICANT_DIGITS:
            return str(int(dec))
        return str(dec.normalize())


@TOOLS.register("python")
def python(code: str) -> str:
    """Runs a Python program in a sandbox (no network, no files kept) and returns what it printed.

    Args:
        code: The program; print the results you need, e.g. "print(sum(range(10)))".
    """
    from rewards.sandbox import SandboxLimits, run_python

    result = run_python({"main.py": code}, SandboxLimits(timeout_s=PYTHON_TIMEOUT_S))
    if result.returncode == 0:
        return result.stdout
    printed = [result.stdout.rstrip("\n")] if result.stdout.strip() else []
    if result.timed_out:
        return "\n".join([*printed, f"[timed out after {PYTHON_TIMEOUT_S:g} s]"])
    tail = result.stderr[-PYTHON_STDERR_TAIL_CHARS:].rstrip("\n")
    return "\n".join([*printed, f"[exit status {result.returncode}]", *([tail] if tail else [])])
