"""One vLLM engine as a rollout role: sampling with per-token log-probs, and weight reload.

`RolloutEngine` is a plain class; `RolloutGroup` runs one per Ray actor. Its method arguments
and results are small dataclasses of Python lists so they cross Ray without tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ling_rl.rollout.vllm_engine import build_llm
from ling_rl.rollout.weight_sync import EXTENSION_CLS


@dataclass
class GenerationRequest:
    """One prompt to sample `n` responses for."""

    prompt_ids: list[int]
    n: int
    seed: int
    """Seed of this request's sampler: the same seed (and weights) gives the same responses.
    vLLM seeds the n samples with seed, seed+1, ..., seed+n-1, so the seed ranges of requests
    generated together must not overlap (checked: overlapping ones would repeat random streams)."""
    max_tokens: int


@dataclass
class Generation:
    """One sampled response."""

    token_ids: list[int]
    logprobs: list[float]
    """Per generated token, the log-prob of the sampled token under the distribution it was
    sampled from: the model's logits / temperature, truncated by top-k and top-p, renormalised
    (vLLM's processed log-probs; the learner computes the same, ling_rl/learner/logprobs.py). At
    temperature 1, top-p 1, top-k -1 (and for greedy decoding) that is the model's log-softmax."""
    text: str
    finish_reason: str
    """`stop` (EOS or a stop token) or `length` (hit `max_tokens`)."""


class RolloutEngine:
    """A `vllm.LLM` with the weight-reload extension, and the policy version it holds."""

    def __init__(self, model_dir: str, rollout: dict[str, Any], dtype: str, max_model_len: int) -> None:
        """`rollout` is `RolloutConfig.model_dump()` (a dict: it crosses into a Ray actor)."""
        started = time.perf_counter()
        self._llm = build_llm(
            model_dir, dtype=dtype, seed=rollout["seed"], max_model_len=max_model_len,
            kv_cache_gib=rollout["kv_cache_gib"], gpu_memory_utilization=rollout["gpu_memory_utilization"],
            tensor_parallel_size=rollout["tensor_parallel_size"], worker_extension_cls=EXTENSION_CLS,
            # The behaviour policy's log-probs (after temperature, top-k, top-p), not the raw
            # model's: the PPO ratio and the mismatch weights compare them with the learner's
            # log-probs of the same processed distribution.
            logprobs_mode="processed_logprobs",
        )
        self._version = 0
        self.start_seconds = time.perf_counter() - started

    def generate(self, requests: list[GenerationRequest], temperature: float, top_p: float,
                 top_k: int) -> list[list[Generation]]:
        """For each request, its `n` generations, in request order."""
        from vllm import SamplingParams

        check_seed_ranges(requests)
        params = [SamplingParams(n=r.n, seed=r.seed, max_tokens=r.max_tokens, temperature=temperature, top_p=top_p,
                                 top_k=top_k, logprobs=0) for r in requests]
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        return [[_generation(c) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]

    def load_weights(self, path: str, version: int) -> None:
        """Reload all weights from the safetensors file at `path` and record `version`."""
        self._llm.collective_rpc("reload_from_safetensors", args=(path,))
        # KV blocks cached for earlier prompts were computed with the old weights; a prefix hit
        # after the reload would silently reuse them.
        if not self._llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight reload (requests still running?)")
        self._version = version

    def version(self) -> int:
        return self._version

    def ping(self) -> bool:
        return True


def check_seed_ranges(requests: list[GenerationRequest]) -> None:
    """Raise if two requests would sample with the same seed (vLLM uses seed..seed+n-1).

    Two prompts sharing a random stream get correlated samples: a silent statistical bug in the
    rollout batch, so it is an error, not a warning.
    """
    spans = sorted((r.seed, r.seed + r.n, i) for i, r in enumerate(requests))
    for (lo_a, hi_a, a), (lo_b, _, b) in zip(spans, spans[1:]):
        if lo_b < hi_a:
            raise ValueError(f"requests {a} and {b} overlap in seeds: request {a} samples with seeds {lo_a}..{hi_a - 1} "
                             f"(seed..seed+n-1) and request {b} starts at {lo_b}; space request seeds by at least n")


def _generation(completion: Any) -> Generation:
    ids = list(completion.token_ids)
    # With logprobs=0 vLLM returns, per step, a dict holding just the sampled token's entry.
    logprobs = [float(step[t].logprob) for step, t in zip(completion.logprobs, ids)]
    if completion.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a generation with reason {completion.finish_reason!r}")
    return Generation(token_ids=ids, logprobs=logprobs, text=completion.text, finish_reason=completion.finish_reason)
