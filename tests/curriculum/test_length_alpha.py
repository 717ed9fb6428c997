"""Issue 23 item 10: the length reward's alpha follows one precedence in training and evaluation.

In training the curriculum writes `length_alpha` (its stage's alpha for the prompt's bucket) on
every prompt; evaluation prompts carry no curriculum columns. A recipe's `args: {alpha: 0.2}` on
the plugin was overridden by that column (1.0 for a solved prompt in training, 0.2 in evaluation).
"""

from __future__ import annotations

import pytest

from curriculum_helpers import sample
from ling_rl.curriculum.config import CurriculumConfig
from ling_rl.curriculum.evo_cot import Curriculum
from rewards.length import Length

COMPLETIONS = {"completions": ["4", "so it is 4"], "completion_ids": [[1], [1, 1, 1]]}


def _score(plugin: Length, columns: dict[str, object]) -> list[float | None]:
    """Score one group of two responses of a prompt with `columns`, as the reward pool passes them."""
    per_row = {name: [value] * 2 for name, value in columns.items() if name != "prompt"}
    return plugin(**COMPLETIONS, **per_row).scores


def test_the_plugins_own_alpha_applies_in_training_and_evaluation() -> None:
    curriculum = Curriculum(CurriculumConfig(), default_max_tokens=16)
    curriculum.tracker.update("solved", 1.0)  # a solved prompt: the default stage table's alpha is 1.0
    training, = curriculum.annotate([sample("solved")])
    assert training.columns["length_alpha"] == 1.0
    evaluation = sample("solved")  # evaluation prompts get no curriculum columns

    fixed = Length(alpha=0.2, correctness="exact_answer")
    assert _score(fixed, training.columns) == pytest.approx([0.1, -0.1])
    assert _score(fixed, evaluation.columns) == pytest.approx([0.1, -0.1])


def test_without_an_alpha_arg_the_curriculum_stage_alpha_applies() -> None:
    curriculum = Curriculum(CurriculumConfig(), default_max_tokens=16)
    curriculum.tracker.update("hard", 0.1)  # bucket 0.0 of the default table: alpha 0.1
    training, = curriculum.annotate([sample("hard")])
    by_stage = Length(correctness="exact_answer")
    assert _score(by_stage, training.columns) == pytest.approx([0.05, -0.05])
    assert _score(by_stage, sample("hard").columns) == pytest.approx([0.5, -0.5])  # no columns: 1.0
