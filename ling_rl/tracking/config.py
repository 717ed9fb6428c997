"""The `tracking:` section: where metrics go."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ling_rl.schema import Section


class WandbConfig(Section):
    """Weights & Biases run settings."""

    enabled: bool = True
    """Log to W&B."""

    mode: Literal["online", "offline", "disabled"] = "online"
    """`offline` writes locally (tests, air-gapped nodes); sync later with `wandb sync`.
    The environment variable `WANDB_MODE`, when set, wins over this value."""

    project: str = "ling-rl"
    """W&B project."""

    entity: str | None = None
    """W&B team or user."""

    tags: list[str] = Field(default_factory=list)
    """Run tags."""


class TrackingConfig(Section):
    """Metric sinks: W&B, a JSONL file in the run folder, and the console."""

    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """W&B settings."""

    jsonl: bool = True
    """Write metrics.jsonl in the run folder (what `ling-rl report` reads)."""

    progress_bar: bool = True
    """Console progress bar with the key metrics on a terminal; off (or not a terminal): one
    plain line per logged step."""

    log_every: int = Field(default=1, ge=1)
    """Send metrics to W&B and print a console line every N steps (and at the last step);
    metrics.jsonl records every step."""
