"""Built-in tools (ling_rl/environments/builtin.py): the calculator's values and refusals, and the
python tool in the real code sandbox (bubblewrap here)."""

from __future__ import annotations

import time

import pytest
from transformers.utils import get_json_schema

from ling_rl.environments.builtin import MAX_RESULT_BITS, TOOLS, calculator, python


@pytest.mark.parametrize(("expression", "value"), [
    ("4821*37-9052", "169325"),
    ("(4821 * 37 - 9052) / 5", "33865"),
    ("123456789 * 987654321", "121932631112635269"),
    ("2**100", "1267650600228229401496703205376"),
    ("1/3", "0.333333333333"),
    ("0.1 + 0.2", "0.3"),  # decimals are exact, not binary floats
    ("7 / 2", "3.5"),
    ("-7 // 2", "-4"),
    ("-7 % 3", "2"),
    ("2 ** -2", "0.25"),
    ("-(3 - 5) * +2", "4"),
    ("1.5e3 / 0.5", "3000"),
    ("2 ** 0.5", "1.41421356237"),
    ("4 ** 0.5", "2"),
    (" 10 ", "10"),
    ("-" * 99 + "2", "-2"),
])
def test_calculator_values(expression: str, value: str) -> None:
    assert calculator(expression) == value


@pytest.mark.parametrize(("expression", "error"), [
    ("1/0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("(-8) ** (1/3)", "not a real number"),
    ("x + 1", "not allowed in an arithmetic expression: 'x'"),
    ("__import__('os').system('id')", "not allowed in an arithmetic expression"),
    ("[1, 2]", "not allowed"),
    ("True + 1", "not allowed"),
    ("1j", "not allowed"),
    ("2 +", "not an arithmetic expression"),
    ("", "not an arithmetic expression"),
])
def test_calculator_refuses_what_is_not_arithmetic(expression: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        calculator(expression)


@pytest.mark.parametrize("expression", [
    "9**9**9", "10**10**10", "2**4096", "(2**4000) * (2**4000)", "1e999999999", "2.5 ** 1e9",
    "9" * 1_000_000, "(" * 400 + "1" + ")" * 400, "-" * 999 + "2", "+".join(["1"] * 400),
])
def test_calculator_refuses_huge_work_quickly(expression: str) -> None:
    start = time.monotonic()
    with pytest.raises(ValueError, match="too large|too long|too deeply|not an arithmetic expression"):
        calculator(expression)
    assert time.monotonic() - start < 1.0  # the bound is the feature: a 10^6-digit power would take minutes
    assert MAX_RESULT_BITS >= 4000


def test_python_tool_prints_and_reports_a_failing_program() -> None:
    assert python("print(sum(range(10)))") == "45\n"
    failed = python("print('before')\nraise ValueError('boom')")
    assert failed.startswith("before\n[exit status 1]\n")
    assert failed.endswith("ValueError: boom")
    assert python("import sys; sys.exit(3)") == "[exit status 3]"
    # The sandbox has no network.
    assert "exit status 1" in python("import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)")


def test_builtins_are_registered_with_schemas() -> None:
    assert TOOLS.names() == ["calculator", "python"]
    for name in TOOLS.names():
        schema = get_json_schema(TOOLS.get(name))["function"]
        assert schema["name"] == name and schema["description"]
        assert list(schema["parameters"]["required"]) == [{"calculator": "expression", "python": "code"}[name]]
