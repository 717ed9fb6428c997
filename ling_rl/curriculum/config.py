"""The `data:`, `curriculum:` and `eval:` sections."""

from __future__ import annotations

from pydantic import Field, model_validator

from ling_rl.schema import Section


class DataConfig(Section):
    """Prompt datasets (JSONL/parquet files, or Hugging Face hub names with network)."""

    train: str
    """Training prompts: a path (`data/arith/train.jsonl`) or a hub name."""

    eval: str | None = None
    """Held-out prompts for evaluation."""

    prompt_key: str = "prompt"
    """Column holding the prompt text."""

    answer_key: str = "answer"
    """Column holding the reference answer (passed to rewards)."""

    shuffle: bool = True
    """Shuffle the training prompts each epoch."""

    seed: int = 0
    """Shuffle seed."""


class StageConfig(Section):
    """One Evo-CoT stage."""

    name: str
    """Shown in logs and reports."""

    alpha: dict[str, float] = Field(default_factory=lambda: {"0.8": 1.0, "0.5": 0.5, "0.2": 0.2, "0.0": 0.1})
    """Length-reward weight by difficulty bucket: pass-rate lower edge -> alpha."""

    max_response_tokens: int | None = Field(default=None, ge=1)
    """Generation budget in this stage (None: rollout.max_response_tokens)."""

    data_mix: dict[str, float] | None = None
    """Dataset name -> sampling weight (None: the training set only)."""

    advance_accuracy: float | None = Field(default=None, gt=0, le=1)
    """Advance when the rolling accuracy reaches this."""

    max_steps: int | None = Field(default=None, ge=1)
    """Advance after this many steps at the latest."""

    @model_validator(mode="after")
    def _alpha_keys(self) -> StageConfig:
        for key in self.alpha:
            try:
                edge = float(key)
            except ValueError:
                raise ValueError(f"alpha key {key!r} must be a pass-rate lower edge like '0.5'") from None
            if not 0.0 <= edge <= 1.0:
                raise ValueError(f"alpha key {key!r} must be in [0, 1]")
        return self


class CurriculumConfig(Section):
    """Evo-CoT curriculum: stages, pass-rate tracking, dynamic sampling."""

    stages: list[StageConfig] = Field(default_factory=list)
    """Stages in order; empty means a single stage with the rollout settings."""

    pass_rate_ema: float = Field(default=0.5, gt=0, le=1)
    """EMA weight of a prompt's newest group accuracy in its pass rate."""

    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal and refill the batch."""

    max_refill_rounds: int = Field(default=2, ge=0)
    """Extra generation rounds allowed to refill dropped groups."""


class EvalConfig(Section):
    """Held-out evaluation during training."""

    every: int = Field(default=0, ge=0)
    """Evaluate every N steps (0: never)."""

    max_prompts: int = Field(default=64, ge=1)
    """Prompts evaluated."""

    samples: int = Field(default=4, ge=1)
    """Sampled responses per prompt (beside one greedy response)."""
