"""Turning prompts into engine requests and engine output into typed `Rollout`s."""

from __future__ import annotations

from ling_rl.rollout.config import RolloutConfig
from ling_rl.rollout.engine import Generation, GenerationRequest
from ling_rl.types import Rollout, Sample


def request_seed(cfg: RolloutConfig, step: int, index: int) -> int:
    """A reproducible sampling seed per (run seed, step, prompt index within the step, refills
    included). vLLM seeds the n samples of a request with seed..seed+n-1, so requests are spaced
    n apart to keep every sample of a call distinct."""
    slot = (cfg.seed * 1_000_003 + step) * 65_536 + index
    return (slot * cfg.group_size) % (2**31 - 2**16)


def make_requests(samples: list[Sample], cfg: RolloutConfig, step: int, max_tokens: int | None = None,
                  offset: int = 0) -> list[GenerationRequest]:
    """One request of `group_size` samples per prompt; `offset` keeps refill rounds' seeds apart."""
    return [GenerationRequest(prompt_ids=s.prompt_ids, n=cfg.group_size, seed=request_seed(cfg, step, offset + i),
                              max_tokens=max_tokens or cfg.max_response_tokens) for i, s in enumerate(samples)]


def to_rollouts(samples: list[Sample], outputs: list[list[Generation]], version: int, group_offset: int = 0) -> list[Rollout]:
    rollouts = []
    for group, (sample, gens) in enumerate(zip(samples, outputs, strict=True), start=group_offset):
        for g in gens:
            rollouts.append(Rollout(sample=sample, group=group, response_ids=list(g.token_ids), response_text=g.text,
                                    inf_logprobs=list(g.logprobs), finish_reason=g.finish_reason, policy_version=version,
                                    routed_experts=g.routed_experts))
    return rollouts
