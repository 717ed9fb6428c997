"""Reward functions for end-to-end tests, loaded by file path like a user's plugin.

`digit_ratio` is written TRL-style (prompts, completions, **columns) with no ling-rl import: a
random tiny policy can climb it within a few dozen steps, which is what the loop tests need.
"""


def digit_ratio(prompts, completions, **columns):
    """Fraction of non-space characters of the completion that are digits."""
    scores = []
    for text in completions:
        chars = [c for c in text if not c.isspace()]
        scores.append(sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0)
    return scores
