r"""`format`: penalties for the wrong response shape (Evo-CoT's R_format; docs/evo-cot.md).

- `mode: instant` (the think-off mode Evo-CoT trains in): a thinking tag (`<think>` or
  `</think>`) anywhere in the response costs `-penalty` (default 0.5).
- `mode: think` (DFT's think-on mode): the response must be exactly
  `<think>...</think><answer>...</answer>` (whitespace around the parts allowed, one of each tag),
  else `-penalty`.
- `require`: the final-answer format, in either mode: `answer_tag` (one `<answer>...</answer>`),
  `boxed` (a closed `\boxed{...}`, inside the answer tag in think mode) or `none`.

A response is scored 0.0 when it has the right shape and `-penalty` when it breaks any rule, so
the plugin only ever subtracts: add it beside a correctness reward.
"""

from __future__ import annotations

import re
from typing import Any

from ling_rl.reward.contract import RewardOutput
from ling_rl.reward.registry import reward
from rewards.answers import last_boxed

MODES = ("instant", "think")
REQUIREMENTS = ("none", "answer_tag", "boxed")

_THINK_TAG = re.compile(r"</?think>", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"</?answer>", re.IGNORECASE)
_THINK_THEN_ANSWER = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.IGNORECASE | re.DOTALL)
_ONE_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


@reward("format")
class Format:
    r"""`-penalty` for a response of the wrong shape, else 0.0 (rules: see the module docstring).

    Metrics (fractions of responses): `violations`; `thinking_tag` (instant mode: a tag present);
    `malformed` (think mode: not `<think>...</think><answer>...</answer>`); `missing_answer` (the
    `require`d answer format absent).

    >>> instant = Format(mode="instant", require="boxed")
    >>> instant(completions=[r"\boxed{4}", r"<think>2+2</think> \boxed{4}", "4"]).scores
    [0.0, -0.5, -0.5]
    >>> think = Format(mode="think", penalty=1.0)
    >>> think(completions=["<think>2+2</think><answer>4</answer>", "<answer>4</answer>"]).scores
    [0.0, -1.0]
    """

    def __init__(self, mode: str = "instant", penalty: float = 0.5, require: str = "none") -> None:
        if mode not in MODES:
            raise ValueError(f"format reward: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if require not in REQUIREMENTS:
            raise ValueError(f"format reward: require must be one of {', '.join(REQUIREMENTS)}, got {require!r}")
        if penalty < 0:
            raise ValueError(f"format reward: penalty is subtracted, give it as a non-negative number, got {penalty}")
        self.mode, self.penalty, self.require = mode, penalty, require

    def __call__(self, completions: list[str], **kwargs: Any) -> RewardOutput:
        counts = {"thinking_tag": 0, "malformed": 0, "missing_answer": 0, "violations": 0}
        scores: list[float | None] = []
        for text in completions:
            broken = self.violations(text)
            for name in broken:
                counts[name] += 1
            counts["violations"] += bool(broken)
            scores.append(-self.penalty if broken else 0.0)
        metrics = {k: v / len(completions) for k, v in counts.items()} if completions else {}
        return RewardOutput(scores=scores, metrics=metrics)

    def violations(self, text: str) -> list[str]:
        """Names of the rules `text` breaks (empty: well-formed)."""
        broken = []
        answer_part = text
        if self.mode == "instant":
            if _THINK_TAG.search(text):
                broken.append("thinking_tag")
        else:
            match = _THINK_THEN_ANSWER.fullmatch(text)
            # One of each tag: a nested or repeated tag would let "<think>a</think><answer>" hide in the parts.
            if match is None or len(_THINK_TAG.findall(text)) != 2 or len(_ANSWER_TAG.findall(text)) != 2:
                broken.append("malformed")
            else:
                answer_part = match.group(2)
        if self.require == "answer_tag" and len(_ONE_ANSWER.findall(text)) != 1:
            broken.append("missing_answer")
        elif self.require == "boxed" and last_boxed(answer_part) is None:
            broken.append("missing_answer")
        return broken
