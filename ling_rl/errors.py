"""Errors that describe a problem with the user's input or a role's failure: the CLI prints them
as one clear message (no traceback)."""

from __future__ import annotations

from ling_rl.driver.checkpoint import CheckpointError
from ling_rl.environments.spec import EnvironmentSetupError
from ling_rl.config import RecipeError
from ling_rl.curriculum.data import DatasetError
from ling_rl.learner.group import LearnerError
from ling_rl.models.ling_config import ModelFolderError
from ling_rl.registry import RegistryError
from ling_rl.reward.loading import RewardResolutionError
from ling_rl.reward.pool import RewardWorkerError
from ling_rl.reward.signal import NoRewardSignal
from ling_rl.rollout.episodes import EnvironmentFailures
from ling_rl.rollout.group import RolloutError

USER_ERRORS: tuple[type[BaseException], ...] = (
    RecipeError, DatasetError, ModelFolderError, LearnerError, RolloutError, RewardResolutionError,
    RewardWorkerError, RegistryError, CheckpointError, NoRewardSignal, EnvironmentFailures,
    EnvironmentSetupError,
)
