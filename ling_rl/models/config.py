"""The `model:` section of a recipe: which policy to load and how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ling_rl.schema import Section


class MTPConfig(Section):
    """Multi-token prediction as an auxiliary loss (needs `num_nextn_predict_layers` > 0)."""

    enabled: bool = False
    """Train the MTP layer(s) of the checkpoint beside the policy loss."""

    loss_weight: float = Field(default=0.1, ge=0)
    """Weight of the mean MTP cross-entropy added to the loss."""


class ModelConfig(Section):
    """The policy: a Hugging Face model folder (BailingMoeV2, or a causal LM transformers knows),
    or a tiny model built locally."""

    path: str | None = None
    """A Hugging Face folder (config.json, safetensors, tokenizer files), e.g. Ling-mini-2.0 or a
    Qwen3 / Llama model, or a hub name."""

    tiny: Literal["tiny", "small", "qwen3", "llama", "qwen3_moe"] | None = None
    """Build a tiny random model + tokenizer locally instead of `path` (tests, quickstart): the Ling
    MoE (`tiny`, `small`) or a Hugging Face architecture through transformers (`qwen3`, `llama`,
    `qwen3_moe`)."""

    backend: Literal["auto", "ling", "hf"] = "auto"
    """Which implementation trains the model (`ling_rl.models.backend`): `ling`, the project's own
    BailingMoeV2 (routing replay, MTP, fp8); `hf`, transformers' modeling code for any causal LM
    (features it lacks are refused by the recipe check); `auto`, from config.json's `architectures`."""

    seed: int = 0
    """Seed of the tiny model's weights and tokenizer."""

    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Parameter dtype of the learner's master weights and of the rollout engine."""

    mtp: MTPConfig = Field(default_factory=MTPConfig)
    """Multi-token-prediction auxiliary loss."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.path (a checkpoint folder) or model.tiny (tiny | small)")
        return self
