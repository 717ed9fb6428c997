r"""Final-answer extraction and comparison shared by the answer rewards.

>>> extract_answer(r"so \boxed{\frac{1}{2}} is it")
'\\frac{1}{2}'
>>> answers_match("1,000.0", 1000)
True
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_IS = re.compile(r"answer is\s*:?\s*([^\n]*)", re.IGNORECASE)
# Thousands separators only in groups of three, so "12, 13" reads as two numbers, "1,234" as one.
_NUMBER = re.compile(r"[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:/\d+)?")
_FRAC = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


def extract_answer(completion: str) -> str | None:
    """The completion's final answer: the last `\boxed{...}`, else the last `<answer>...</answer>`,
    else what follows the last "answer is", else the last number; None when there is none."""
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        return tags[-1].strip()
    stated = _ANSWER_IS.findall(completion)
    if stated:
        # "The answer is 42, since ..." -> "42": stop at the end of the clause.
        answer = _first_clause(stated[-1]).strip().rstrip(".")
        if answer:
            return answer
    return last_number(completion)


def _first_clause(text: str) -> str:
    """`text` up to the first clause break (", ", "; ", ". ", ...) outside brackets, so that
    "(1, 2], since ..." keeps the interval "(1, 2]" whole."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and ch in ",;.!?" and (i + 1 == len(text) and ch in ";!?" or text[i + 1 : i + 2].isspace()):
            return text[:i]
    return text


# A number followed only by unit words: "5 apples", "12 dollars", "3.5 km per hour".
# `{2,}+` is possessive: a unit word takes its whole run of letters, so a run cannot be split into
# words in exponentially many ways when the match fails (38 letters took 6.5 s, x1.6 per letter).
_NUMBER_WITH_UNITS = re.compile(r"\s*([-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?)\s*(?:[A-Za-z]{2,}+\.?(?:\^\d)?\s*)+")


def strip_units(answer: str) -> str:
    """`answer` without trailing unit words ("5 apples" -> "5"); any other text is returned unchanged.

    LaTeX units (`5\\text{ cm}`, `90^\\circ`) are left to math-verify, which strips them itself;
    plain words would otherwise parse as a product of symbols (12*d*o*l*l*a*r*s).
    Single letters are kept: "2 x" is an expression, not a unit.

    >>> strip_units("5 apples"), strip_units("3.5 km per hour"), strip_units("2 x"), strip_units("x + 1")
    ('5', '3.5', '2 x', 'x + 1')
    """
    text = _TEXT.sub(r"\1", answer)
    match = _NUMBER_WITH_UNITS.fullmatch(text)
    return match.group(1) if match else answer


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


MAX_NUMBER_CHARS = 1000
"""Longer text is not read as a number (`parse_number` gives None; equal texts still match as text)."""

MAX_EXPONENT = 1000
"""Largest |exponent| `parse_number` reads: `Fraction("1e10000000")` builds a ten-million-digit
integer (7 s) and `1e999999999` never finishes; no reference answer needs more."""

_EXPONENT = re.compile(r"[eE][-+]?(\d+)")


def parse_number(text: str) -> Fraction | None:
    """Exact value of a numeric answer ("12", "12.0", "1,234", "-3/4", "\\frac{3}{4}", "$5$"), else None.

    None too for text longer than `MAX_NUMBER_CHARS` and exponents beyond `MAX_EXPONENT`, so a
    response cannot make the exact arithmetic run for seconds.

    >>> parse_number("1.5e3"), parse_number("1e10000000")
    (Fraction(1500, 1), None)
    """
    if len(text) > MAX_NUMBER_CHARS:
        return None
    t = _TEXT.sub(r"\1", text).replace("\\!", "").replace("−", "-").replace("$", "").strip()
    t = _FRAC.sub(r"(\1)/(\2)", t).replace("(", "").replace(")", "")
    t = t.rstrip(".,;:").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    if any(len(e) > 4 or int(e) > MAX_EXPONENT for e in _EXPONENT.findall(t)):
        return None
    try:
        return Fraction(t.replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, reference: Any) -> bool:
    """Numeric equality when both parse as numbers, else equality of normalized text."""
    ref = str(reference)
    p, r = parse_number(predicted), parse_number(ref)
    if p is not None and r is not None:
        return p == r
    return _normalize_text(predicted) == _normalize_text(ref)


def _normalize_text(text: str) -> str:
    t = _TEXT.sub(r"\1", text).replace("$", "").strip().rstrip(".").strip()
    return " ".join(t.lower().split())


def _last_boxed(text: str) -> str | None:
    """Content of the last `\boxed{...}`, with nested braces balanced (regex cannot do that)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unclosed: the model ran out of tokens inside the box


def last_boxed(text: str) -> str | None:
    r"""Content of the last closed `\boxed{...}` of `text`, or None (e.g. a format check)."""
    return _last_boxed(text)
