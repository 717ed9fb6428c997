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
        answer = re.split(r"[,;.!?]\s|[;!?]$", stated[-1], maxsplit=1)[0].strip().rstrip(".")
        if answer:
            return answer
    return last_number(completion)


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def parse_number(text: str) -> Fraction | None:
    """Exact value of a numeric answer ("12", "12.0", "1,234", "-3/4", "\\frac{3}{4}", "$5$"), else None."""
    t = _TEXT.sub(r"\1", text).replace("\\!", "").replace("−", "-").replace("$", "").strip()
    t = _FRAC.sub(r"(\1)/(\2)", t).replace("(", "").replace(")", "")
    t = t.rstrip(".,;:").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
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
