"""The `data:` section: where prompts come from and how they are shown to the model."""

from __future__ import annotations

from pydantic import Field

from ling_rl.schema import Section


class DataConfig(Section):
    """Prompt datasets (JSONL/parquet files, or Hugging Face hub names with network)."""

    train: str
    """Training prompts: a path (`data/arith/train.jsonl`) or a hub name."""

    prompt_key: str = "prompt"
    """Column holding the prompt text."""

    prompt_template: str = "{prompt}"
    """Format of the text given to the model; `{prompt}` is replaced by the prompt column."""

    max_rows: int | None = Field(default=None, ge=1)
    """Use only the first N rows (quick runs)."""

    answer_key: str = "answer"
    """Column holding the reference answer (passed to rewards)."""

    shuffle: bool = True
    """Shuffle the training prompts each epoch."""

    seed: int = 0
    """Shuffle seed."""
