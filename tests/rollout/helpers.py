"""Helpers of the rollout tests: prompts, and the project model's log-probs to compare against."""

from __future__ import annotations

import torch

from ling_rl.models.ling_moe import LingForCausalLM
from ling_rl.rollout.engine import Generation


def policy_logprobs(model: LingForCausalLM, prompt: list[int], response: list[int]) -> torch.Tensor:
    """The project model's log-prob of each response token (float64)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].double()
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1]
    return logp.gather(1, torch.tensor(response)[:, None])[:, 0]


def max_logprob_gap(model: LingForCausalLM, prompts: list[list[int]], outputs: list[list[Generation]]) -> float:
    """Largest |engine log-prob - project log-prob| over every generated token."""
    worst = 0.0
    for prompt, gens in zip(prompts, outputs, strict=True):
        for g in gens:
            ours = policy_logprobs(model, prompt, g.token_ids)
            worst = max(worst, (ours - torch.tensor(g.logprobs, dtype=torch.float64)).abs().max().item())
    return worst


def prompts(n: int, seed: int, min_len: int = 3, max_len: int = 24, vocab: int = 1024) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, vocab, (int(torch.randint(min_len, max_len + 1, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]
