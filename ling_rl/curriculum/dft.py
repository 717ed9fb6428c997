"""DFT, decoupled fine-tuning (Ling 2.0, 4.1): the SFT warm start of a recipe.

One model learns two modes selected by the prompt: "detailed think off" -> the plain answer,
"detailed think on" -> `<think>solution</think><answer>answer</answer>`. The loss is the
cross-entropy of the response tokens only. Evo-CoT RL then runs in the think-off (instant) mode,
so the RL prompt template should be `think_off_template`.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from ling_rl.curriculum.data import DatasetError, chat_messages, render_chat_reply
from ling_rl.schema import Section
from ling_rl.types import TrainBatch


class DFTConfig(Section):
    """The `dft:` section: an SFT warm start on the learner before RL."""

    enabled: bool = False
    """Run DFT before the first RL step (skipped when resuming from an RL checkpoint)."""

    data: str | None = None
    """Dataset with prompt, answer and solution columns (None: `data.train`)."""

    steps: int = Field(default=100, ge=1)
    """Optimizer steps."""

    batch_size: int = Field(default=32, ge=1)
    """Examples per step."""

    lr: float = Field(default=1e-3, gt=0)
    """Constant learning rate of DFT's own AdamW (the RL optimizer starts fresh after it)."""

    think_on_fraction: float = Field(default=0.5, ge=0, le=1)
    """Share of examples in think-on mode."""

    think_off_template: str = "detailed think off\nQuestion: {prompt}\nAnswer:"
    """Prompt of the instant mode; `{prompt}` is the prompt column."""

    think_on_template: str = "detailed think on\nQuestion: {prompt}\nAnswer:"
    """Prompt of the thinking mode."""

    solution_key: str = "solution"
    """Column with the step-by-step solution (think-on responses, and think-off ones with
    `think_off_response: solution`)."""

    think_off_response: Literal["answer", "solution"] = "answer"
    """What the think-off (instant) mode answers: `answer`, the answer column alone; `solution`,
    the solution column as plain sentences without tags (Ling's instant mode still writes its
    reasoning, briefly; the solution should then state its final answer, e.g. "The answer is 7.")."""

    seed: int = 0
    """Order of examples and choice of modes."""

    @model_validator(mode="after")
    def _templates(self) -> DFTConfig:
        for name in ("think_off_template", "think_on_template"):
            if "{prompt}" not in getattr(self, name):
                raise ValueError(f"{name} must contain {{prompt}}")
        return self


def response_text(row: dict[str, Any], think: bool, cfg: DFTConfig, answer_key: str) -> str:
    answer = str(row[answer_key])
    if think:
        return f" <think>{row[cfg.solution_key]}</think><answer>{answer}</answer>"
    return f" {row[cfg.solution_key]}" if cfg.think_off_response == "solution" else f" {answer}"


class DFTData:
    """Tokenized DFT examples, served in seeded random batches.

    With `chat_template` (`data.chat_template`), the prompt is the mode's template as the user's
    message (after `system_prompt`, if any) rendered as RL prompts are, and the response is the
    chat template's rendering of the assistant's turn, up to and including the EOS token (appended
    when the template's turn does not contain it), so the model learns to stop where generation stops.
    """

    def __init__(self, rows: list[dict[str, Any]], cfg: DFTConfig, tokenizer: Any, prompt_key: str, answer_key: str,
                 source: str, *, chat_template: bool = False, system_prompt: str | None = None) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        eos = tokenizer.eos_token_id
        self.examples: list[tuple[list[int], list[int]]] = []
        for i, row in enumerate(rows):
            for key in (prompt_key, answer_key, cfg.solution_key):
                if row.get(key) is None:
                    raise DatasetError(f"{source}: row {i}: DFT needs column {key!r}; columns: {sorted(row)}")
            think = self.rng.random() < cfg.think_on_fraction
            template = cfg.think_on_template if think else cfg.think_off_template
            prompt_text, reply = template.format(prompt=row[prompt_key]), response_text(row, think, cfg, answer_key)
            if chat_template:
                # The reply's leading space follows "Answer:" in a plain prompt; a chat message has none.
                prompt_text, reply = render_chat_reply(tokenizer, chat_messages(prompt_text, system_prompt), reply.lstrip())
            prompt = tokenizer.encode(prompt_text, add_special_tokens=False)
            response = tokenizer.encode(reply, add_special_tokens=False)
            response = response[: response.index(eos) + 1] if eos in response else [*response, eos]
            self.examples.append((prompt, response))

    def batch(self, pad_id: int) -> TrainBatch:
        chosen = [self.examples[self.rng.randrange(len(self.examples))] for _ in range(self.cfg.batch_size)]
        t = max(len(p) + len(r) for p, r in chosen)
        ids = torch.full((len(chosen), t), pad_id, dtype=torch.long)
        mask = torch.zeros(len(chosen), t, dtype=torch.bool)
        for i, (p, r) in enumerate(chosen):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, len(p) : len(p) + len(r)] = True
        zeros = torch.zeros(len(chosen), t)
        return TrainBatch(input_ids=ids, response_mask=mask, advantages=zeros, unit_ids=torch.zeros_like(ids),
                          inf_logprobs=zeros)
