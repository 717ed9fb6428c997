"""What a learner rank is given of the recipe: the sections it uses, not the whole tree.

    sections = LearnerSections.of(recipe)
    worker = LearnerWorker(rank, world, sections, model_dir)

It crosses into the Ray actor as a pydantic object (pickled; validated when built here).
"""

from __future__ import annotations

from ling_rl.algorithms.config import AlgorithmConfig
from ling_rl.config import Recipe, RunConfig
from ling_rl.learner.config import LearnerConfig
from ling_rl.models.config import ModelConfig
from ling_rl.rollout.config import RolloutConfig
from ling_rl.schema import Section


class LearnerSections(Section):
    """The recipe sections a learner rank reads."""

    learner: LearnerConfig
    """Optimiser, precision, micro-batching, ranks."""

    algorithm: AlgorithmConfig
    """The policy loss, the mismatch correction and the KL term (whether a reference model is built)."""

    model: ModelConfig
    """MTP training switch and weight."""

    run: RunConfig
    """The seed of the model initialisation and the run length (the LR schedule)."""

    rollout: RolloutConfig
    """Routing replay, and the sampling settings (temperature, top-p, top-k) that define the
    behaviour policy the learner's log-probs must describe."""

    @classmethod
    def of(cls, recipe: Recipe) -> LearnerSections:
        return cls(learner=recipe.learner, algorithm=recipe.algorithm, model=recipe.model, run=recipe.run,
                   rollout=recipe.rollout)
