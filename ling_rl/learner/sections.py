"""What a learner rank is given of the recipe: the sections it uses, not the whole tree.

    sections = learner_sections(recipe)          # ling_rl/driver/session.py: roles meet in the driver
    worker = LearnerWorker(rank, world, sections, model_dir)

It crosses into the Ray actor as a pydantic object (pickled; validated when built there). The
learner imports neither the rollout package nor the recipe's root: of the rollout section it gets
only `BehaviourPolicy`, the settings that define the policy its log-probs must describe.
"""

from __future__ import annotations

from typing import Literal

from ling_rl.algorithms.config import AlgorithmConfig
from ling_rl.config import RunConfig
from ling_rl.learner.config import LearnerConfig
from ling_rl.models.config import ModelConfig
from ling_rl.schema import Section


class BehaviourPolicy(Section):
    """How the engines sampled (copied from `rollout:` by the driver): the learner's log-probs
    describe this policy, and it replays routes and logs staleness the same way."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    routing_replay: Literal["none", "r2", "r3"] = "none"
    max_staleness: int = 0


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

    rollout: BehaviourPolicy
    """Routing replay, staleness bound and the sampling settings (temperature, top-p, top-k) that
    define the behaviour policy the learner's log-probs must describe."""
