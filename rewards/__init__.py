"""Built-in reward plugins; importing this package registers them (see `ling_rl.reward.registry`).

- `exact_answer`: 1.0 / 0.0 exact match of the final answer against the `answer` column.
- `answer_proximity`: shaped numeric closeness to `answer`, usable from a random policy.
"""

from rewards import answer_proximity, exact_answer

__all__ = ["answer_proximity", "exact_answer"]
