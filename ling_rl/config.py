"""The recipe: one strict pydantic tree assembled from the sections each component owns.

    recipe = load_recipe("recipes/quickstart.yaml", ["learner.lr=1e-6", "algorithm.loss.type=lpo"])

Unknown keys, wrong types and inconsistent values raise `RecipeError` whose message has one line
per problem, each naming the key path and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from ling_rl.algorithms.config import AlgorithmConfig
from ling_rl.cluster.config import ClusterConfig
from ling_rl.curriculum.dft import DFTConfig
from ling_rl.driver.evaluation import EvalConfig
from ling_rl.curriculum.config import CurriculumConfig, DataConfig
from ling_rl.environments.config import EnvironmentConfig
from ling_rl.learner.config import CheckpointConfig, LearnerConfig
from ling_rl.models.config import ModelConfig
from ling_rl.reward.config import RewardSignalConfig, RewardSpec, duplicate_keys
from ling_rl.rollout.config import RolloutConfig
from ling_rl.schema import Section
from ling_rl.tracking.config import TrackingConfig


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names every offending key path."""


class RunConfig(Section):
    """Run identity and length."""

    name: str = "ling-rl"
    """Run name (W&B run name, run folder name)."""

    output_dir: str = "runs"
    """Parent folder of the run folder (checkpoints, metrics.jsonl, report)."""

    steps: int = Field(default=100, ge=1)
    """RL steps (each: generate, score, train, sync)."""

    seed: int = 0
    """Global seed (torch, python, numpy) of the driver and learner."""


class Recipe(Section):
    """A whole ling-rl recipe."""

    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig
    data: DataConfig
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    rewards: list[RewardSpec] = Field(default_factory=list)
    """Reward plugins; empty only with an `environment.factory` whose `get_reward` owns the reward."""
    environment: EnvironmentConfig | None = None
    """Tools or an environment for multi-turn episodes (agentic RL, docs/environments.md); absent:
    single-turn responses."""
    reward_signal: RewardSignalConfig = Field(default_factory=RewardSignalConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    dft: DFTConfig = Field(default_factory=DFTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.rollout.group_size < 2 and self.algorithm.advantage.needs_pairs:
            raise _CrossField(
                "rollout.group_size",
                f"is {self.rollout.group_size}, but algorithm.advantage.type={self.algorithm.advantage.type} "
                "needs at least 2 responses per prompt (its baseline compares a prompt's responses)",
            )
        if self.learner.num_ranks > self.rollout.prompts_per_step * self.rollout.group_size:
            raise _CrossField("learner.num_ranks", f"is {self.learner.num_ranks}, more than the "
                              f"{self.rollout.prompts_per_step * self.rollout.group_size} responses of a step")
        for i, stage in enumerate(self.curriculum.stages):
            if stage.max_response_tokens is not None and stage.max_response_tokens > self.rollout.max_response_tokens:
                raise _CrossField(f"curriculum.stages.{i}.max_response_tokens", f"is {stage.max_response_tokens}, above "
                                  f"rollout.max_response_tokens={self.rollout.max_response_tokens} (the engines' length budget)")
        if self.eval.max_response_tokens is not None and self.eval.max_response_tokens > self.rollout.max_response_tokens:
            raise _CrossField("eval.max_response_tokens", f"is {self.eval.max_response_tokens}, above rollout."
                              f"max_response_tokens={self.rollout.max_response_tokens} (the engines' length budget)")
        if self.eval.every > 0 and self.eval.data is None:
            raise _CrossField("eval.data", f"is missing but eval.every={self.eval.every}: name the held-out prompts")
        sources = {self.data.train, *(k for st in self.curriculum.stages for k in st.data_mix or {}),
                   *([self.eval.data] if self.eval.data else []), *self.eval.extra_data.values(),
                   *([self.dft.data] if self.dft.data else [])}
        for name in self.data.splits:
            if name not in sources:
                raise _CrossField(f"data.splits.{name}", f"names no data source of the recipe; its sources: "
                                  f"{', '.join(sorted(sources))}")
        if not self.rewards and (self.environment is None or self.environment.factory is None):
            raise _CrossField("rewards", "is empty: give at least one reward plugin (only an environment.factory "
                              "whose get_reward() owns the reward may stand in for them)")
        env = self.environment
        if env is not None and env.max_episode_tokens is not None and env.max_episode_tokens > self.rollout.max_response_tokens:
            raise _CrossField("environment.max_episode_tokens", f"is {env.max_episode_tokens}, above rollout."
                              f"max_response_tokens={self.rollout.max_response_tokens} (the engines' length budget)")
        if self.environment is not None and not self.data.chat_template:
            raise _CrossField("data.chat_template", "is false, but environment is set: tool calls and their results "
                              "are turns of a conversation, rendered by the tokenizer's chat template (set it to true)")
        duplicate = duplicate_keys(self.rewards)
        if duplicate:
            raise _CrossField("rewards", duplicate)
        labels = [r.key for r in self.rewards]
        if env is not None and env.factory is not None:
            # The environment's `get_reward()` is one more reward source, named after its class: the
            # factory's name here, checked against the loaded class when the run starts (reward_specs).
            labels.append(env.factory.rsplit(":", 1)[-1])
        filters_on_correctness = self.curriculum.dynamic_sampling and self.curriculum.filter_on != "reward"
        if (self.curriculum.stages or self.eval.every or filters_on_correctness) and self.curriculum.correctness not in labels:
            raise _CrossField("curriculum.correctness", f"is {self.curriculum.correctness!r}, which is not one of the "
                              f"rewards ({', '.join(labels)}); stages, evaluation and dynamic sampling "
                              "(curriculum.filter_on: correctness or correct_reward) judge correctness by it")
        fp8 = self.learner.fp8
        if self.learner.precision == "fp8" and fp8.fsdp_float8_all_gather and fp8.scaling != "tensorwise":
            raise _CrossField("learner.fp8.fsdp_float8_all_gather", f"is true, but torchao's float8 all-gather "
                              f"needs learner.fp8.scaling=tensorwise (got {fp8.scaling}); set it to false for rowwise")
        c = self.cluster
        if self.learner.device == "cuda" and c.learner.num_gpus < 1:
            raise _CrossField("learner.device", f"is 'cuda', but cluster.learner.num_gpus is {c.learner.num_gpus:g}: "
                              "each learner rank needs a GPU of its own (set it to 1, or learner.device: cpu/auto)")
        need = (self.rollout.num_engines * c.rollout.num_cpus + self.learner.num_ranks * c.learner.num_cpus
                + c.reward_workers * c.reward.num_cpus)
        if c.address is None and c.num_cpus is not None and need > c.num_cpus:
            raise _CrossField("cluster.num_cpus", f"is {c.num_cpus}, but the roles ask for {need:g} CPUs (engines, learner "
                              "ranks and reward workers times their cluster.<role>.num_cpus); Ray could never place them")
        return self


class _CrossField(ValueError):
    """A cross-section inconsistency, reported at `path` rather than at the recipe root."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path} {message}")
        self.path = path


# --- loading -------------------------------------------------------------------------------------


def read_recipe_tree(path: str | Path) -> dict[str, Any]:
    """The recipe file at `path` as a plain YAML mapping, not yet validated; a missing file,
    invalid YAML or a non-mapping is a `RecipeError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections, got {type(data).__name__}")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    data = read_recipe_tree(path)
    for item in overrides or []:
        apply_override(data, item)
    return parse_recipe(data, source=str(path))


def parse_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError("\n".join(f"{source}: {line}" for line in _describe(e))) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML; list items addressed by index) to `data`."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. learner.lr=1e-6")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where, item)]
        elif isinstance(node, dict):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict | list):
                raise RecipeError(f"override {item!r}: {where} is a value ({child!r}), not a section")
            node = child
        else:
            raise RecipeError(f"override {item!r}: {where} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key, item)] = value
    else:
        node[last] = value


def _list_index(node: list[Any], part: str, where: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"override {item!r}: {where}: list index must be 0..{len(node) - 1}")
    return int(part)


def _describe(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        path = ".".join(loc)
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _CrossField):
            lines.append(f"{ctx_err.path}: {str(ctx_err)[len(ctx_err.path) + 1:]}")
            continue
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            lines.append(f"{path}: unknown key '{loc[-1]}'" + (f"; allowed keys: {', '.join(allowed)}" if allowed else ""))
        elif e["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            lines.append(f"{path or '(root)'}: {msg}{shown}")
    return lines


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the section at `loc`, found by walking the schema."""
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if model is None:
            return []
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _section_type(field.annotation)
    return list(model.model_fields) if model else []


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found:
            return found
    return None
