"""Helpers of the rollout tests: prompts, the project model's log-probs to compare against, and an
engine whose steps a test can slow or stop."""

from __future__ import annotations

import time

import torch

from ling_rl.learner.logprobs import token_logprobs
from ling_rl.models.ling_moe import LingForCausalLM
from ling_rl.rollout.engine import Generation, RolloutEngine


def policy_logprobs(model: LingForCausalLM, prompt: list[int], response: list[int], **sampling: float) -> torch.Tensor:
    """The learner's log-prob of each response token: the project model's logits through the
    learner's behaviour-policy transform (`sampling`: temperature, top_p, top_k)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    return token_logprobs(logits, torch.tensor(response), **sampling).double()


def max_logprob_gap(model: LingForCausalLM, prompts: list[list[int]], outputs: list[list[Generation]],
                    **sampling: float) -> float:
    """Largest |engine log-prob - learner log-prob| over every generated token."""
    worst = 0.0
    for prompt, gens in zip(prompts, outputs, strict=True):
        for g in gens:
            ours = policy_logprobs(model, prompt, g.token_ids, **sampling)
            worst = max(worst, (ours - torch.tensor(g.logprobs, dtype=torch.float64)).abs().max().item())
    return worst


def prompts(n: int, seed: int, min_len: int = 3, max_len: int = 24, vocab: int = 1024) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, vocab, (int(torch.randint(min_len, max_len + 1, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


class PacedEngine(RolloutEngine):
    """A `RolloutEngine` whose vLLM steps can be slowed or stopped (`set_pace`)."""

    _pace_s = 0.0
    _stall_at: int | None = None

    def set_pace(self, pace_s: float, stall_at_step: int | None = None) -> None:
        """Sleep `pace_s` before each vLLM step; from engine step `stall_at_step` (counted over the
        engine's life) on, block instead (60 s: the test kills the engine long before)."""
        self._pace_s, self._stall_at = pace_s, stall_at_step

    def steps(self) -> int:
        return self._steps

    def _step(self) -> list:
        if self._stall_at is not None and self._steps >= self._stall_at:
            time.sleep(60)
        time.sleep(self._pace_s)
        return super()._step()
