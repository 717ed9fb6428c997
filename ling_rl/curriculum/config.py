"""The `data:` and `curriculum:` sections: where prompts come from, how they are shown to the model,
and the Evo-CoT stages that schedule them (docs: Evo-CoT and DFT)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ling_rl.curriculum.buckets import DEFAULT_ALPHA
from ling_rl.schema import Section


class DataConfig(Section):
    """Prompt datasets (JSONL/parquet files, or Hugging Face hub names with network)."""

    train: str
    """Training prompts: a path (`data/arith/train.jsonl`) or a hub name."""

    prompt_key: str = "prompt"
    """Column holding the prompt text."""

    prompt_template: str = "{prompt}"
    """Format of the text given to the model; `{prompt}` is replaced by the prompt column. With
    `chat_template`, this text is the user's message."""

    chat_template: bool = False
    """Render each prompt with the tokenizer's chat template (`apply_chat_template` with
    `add_generation_prompt=True`): an optional system message (`system_prompt`), then the user's
    message (`prompt_template` filled in), then the opening of the assistant's turn. DFT examples
    are rendered the same way, the response being the template's assistant turn. The data is then
    conversational: reward plugins written as TRL reward functions get prompts and completions as
    lists of `{role, content}` messages, as TRL passes them (`ling_rl.reward.contract`). The
    tokenizer must have a chat template."""

    system_prompt: str | None = None
    """System message put before every prompt (needs `chat_template: true`); None: no system message."""

    max_rows: int | None = Field(default=None, ge=1)
    """Use only the first N rows (quick runs)."""

    splits: dict[str, str] = Field(default_factory=dict)
    """Dataset -> the split to read, for a local dataset folder or a hub dataset with several
    splits: any source of the recipe (`train`, a `data_mix` key, `eval.data`, an `eval.extra_data`
    set, `dft.data`), e.g. `{HuggingFaceH4/MATH-500: test}`. A source not named here reads its only
    split, else its `train` split. A single file has no splits."""

    answer_key: str = "answer"
    """Column holding the reference answer (passed to rewards)."""

    shuffle: bool = True
    """Shuffle the training prompts each epoch."""

    seed: int = 0
    """Shuffle seed."""

    @model_validator(mode="after")
    def _system_prompt_needs_chat(self) -> DataConfig:
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError("system_prompt is set but chat_template is false: a system message exists only in a "
                             "chat template; set chat_template: true")
        return self


class StageConfig(Section):
    """One Evo-CoT stage: alpha table, length budget, data mix, advance rule."""

    name: str = Field(min_length=1)
    """Stage name (metrics, logs, checkpoint check on resume)."""

    alpha: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_ALPHA))
    """Length-reward weight per difficulty bucket: lower pass-rate edge -> alpha. A prompt falls in
    the bucket of the largest edge strictly below its pass rate; the `0.0` edge (required) takes
    every other rate, pass rate 0 included. With the default, a rate of exactly 0.8 is in bucket
    `0.5`. Edges are in [0, 1) and are stored normalized (`0` -> `0.0`); alphas are >= 0."""

    max_response_tokens: int | None = Field(default=None, ge=1)
    """Generation budget of this stage; None uses rollout.max_response_tokens (it may not exceed it)."""

    data_mix: dict[str, float] | None = None
    """Dataset path -> sampling weight for this stage's prompts; None draws only from data.train."""

    advance_accuracy: float | None = Field(default=None, ge=0, le=1)
    """Advance once the rolling accuracy (curriculum.accuracy_window steps, window full) reaches this."""

    max_steps: int | None = Field(default=None, ge=1)
    """Advance after this many steps in the stage, whatever the accuracy. The last stage never advances."""

    @field_validator("alpha", mode="before")
    @classmethod
    def _stringify_edges(cls, value: object) -> object:
        # YAML reads `{0.8: 1.0}` with float keys; accept them as the edges they mean.
        if isinstance(value, dict):
            return {str(k) if isinstance(k, int | float) and not isinstance(k, bool) else k: v for k, v in value.items()}
        return value

    @field_validator("alpha")
    @classmethod
    def _alpha_table(cls, value: dict[str, float]) -> dict[str, float]:
        table: dict[str, float] = {}
        for key, alpha in value.items():
            try:
                edge = float(key)
            except ValueError:
                raise ValueError(f"edge {key!r} is not a number; keys are pass-rate lower edges like '0.8'") from None
            if not 0.0 <= edge < 1.0:
                raise ValueError(f"edge {key!r} is outside [0, 1); an edge is the pass rate a bucket starts above")
            if not math.isfinite(alpha) or alpha < 0:
                raise ValueError(f"alpha {alpha!r} of edge {key!r} must be a finite number >= 0")
            if str(edge) in table:
                raise ValueError(f"edge {key!r} is given twice")
            table[str(edge)] = alpha
        if "0.0" not in table:
            edges = ", ".join(sorted(table, key=float)) or "none"
            raise ValueError(f"needs a '0.0' edge (the bucket of the hardest prompts); got edges: {edges}")
        return dict(sorted(table.items(), key=lambda kv: -float(kv[0])))

    @field_validator("data_mix")
    @classmethod
    def _mix(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if any(not math.isfinite(w) or w < 0 for w in value.values()):
            raise ValueError("weights must be finite numbers >= 0")
        if not value or sum(value.values()) <= 0:
            raise ValueError("needs at least one dataset with a weight > 0 (or leave data_mix unset for data.train)")
        return value


class CurriculumConfig(Section):
    """Evo-CoT curriculum: stages, per-prompt pass rates, dynamic sampling."""

    stages: list[StageConfig] = Field(default_factory=list)
    """Stages in order; empty runs one implicit stage (default alpha table, rollout settings, data.train)."""

    correctness: str = "exact_answer"
    """Reward key (a `rewards:` entry's `alias`, default its function's name) whose score decides whether a
    response is correct. A response without that score is not counted."""

    correct_threshold: float = 1.0
    """A response is correct when its `correctness` score is >= this; a None score is not counted."""

    pass_rate_ema: float = Field(default=0.5, gt=0, le=1)
    """Weight of a new group's accuracy in a prompt's pass rate: rate <- (1 - w) * rate + w * acc.
    A prompt's first observed group sets its rate directly; 1.0 keeps only the latest group."""

    initial_pass_rate: float = Field(default=0.5, ge=0, le=1)
    """Pass rate assumed for prompts never scored yet (decides their bucket and alpha)."""

    accuracy_window: int = Field(default=4, ge=1)
    """Steps in the rolling accuracy (pooled over their counted responses) that drives `advance_accuracy`."""

    dynamic_sampling: bool = False
    """Drop flat groups (see `filter_on`) and refill with new prompts."""

    filter_on: Literal["correctness", "reward", "correct_reward"] = "correctness"
    """What makes a group flat for dynamic sampling. `correctness` (the default): its
    trained responses are all correct or all wrong, judged as for pass rates (`correctness` score
    >= `correct_threshold`); a response whose correctness score is None is left out of the
    comparison, and a group with fewer than two verdicts is flat. `reward`: its trained responses'
    total rewards are all equal (within 1e-9); with a length term in the total such groups are
    almost never flat, and group normalization turns small length differences into +-1 advantages
    (in an all-wrong group that teaches being wrong more briefly: a quickstart run collapsed from 51%
    to 6% held-out accuracy that way, bench/RESULTS.md). `correct_reward`: the total reward of a
    correct response, 0 for a wrong one: all-wrong groups are flat, all-correct groups stay while
    their length terms differ (Evo-CoT's brevity on the prompts the policy already solves), mixed
    groups stay."""

    max_refill_rounds: int = Field(default=2, ge=0)
    """Extra generation rounds per step when dynamic sampling refills; 0 only drops flat groups."""

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        names = [s.name for s in stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)}")
        return stages
