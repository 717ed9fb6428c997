"""Reward functions written for TRL, with no ling-rl import: used unchanged by file and dotted path."""

import re


def format_reward(completions, **kwargs):
    """TRL-style: 1.0 for `<think>...</think>` followed by an answer."""
    return [1.0 if re.match(r"^<think>.*?</think>\s*\S", c, re.DOTALL) else 0.0 for c in completions]


def solution_match(completions, solution, **kwargs):
    """TRL-style with a dataset column (`solution`) as keyword; None when there is no solution."""
    return [None if s is None else float(c.strip().endswith(str(s))) for c, s in zip(completions, solution)]


def conversation_shape(prompts, completions, **kwargs):
    """TRL-style, for conversational data: 1.0 when the prompt is its messages (ending with the
    user's) and the completion is one assistant message, as TRL passes them."""
    return [float(isinstance(p, list) and p[-1]["role"] == "user" and c == [{"role": "assistant", "content": c[0]["content"]}])
            for p, c in zip(prompts, completions)]
