"""Log-probs of the distribution the rollout engine samples from (the behaviour policy).

vLLM samples from the model's logits divided by the temperature, then truncated by top-k and
top-p; with `logprobs_mode="processed_logprobs"` (ling_rl/rollout/engine.py) the log-probs it
reports are those of that processed distribution. The learner applies the same transformation, in
vLLM's order (vllm/v1/sample/sampler.py and ops/topk_topp_sampler.py, vLLM 0.32):

1. a temperature below `GREEDY_TEMPERATURE` is greedy decoding: vLLM applies nothing (plain
   log-softmax of the logits) and so does this module (no division by zero);
2. logits / temperature;
3. top-k (k > 0 and below the vocabulary size): logits below the k-th largest become -inf (ties
   at the k-th value are kept);
4. top-p (p < 1), on what top-k kept: in ascending order of logits, the tokens whose cumulative
   probability is <= 1 - p become -inf; the most likely token is always kept;
5. log-softmax.

With temperature 1, top-p 1 and top-k -1 this is the plain log-softmax of the logits.
"""

from __future__ import annotations

import torch

GREEDY_TEMPERATURE = 1e-5
"""vLLM's `_SAMPLING_EPS`: below it a request is decoded greedily."""


def processed_logits(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """`logits` [..., V] after temperature, top-k and top-p (excluded tokens at -inf)."""
    return _truncate(_tempered(logits, temperature), temperature, top_p, top_k)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                   top_k: int = -1) -> torch.Tensor:
    """Log-prob of `targets` [...] under the processed distribution of `logits` [..., V] (float32).

    A target that top-k / top-p excluded (a prompt or padding position, or a sampled token that
    fell just outside the learner's nucleus through rounding) gets its log-prob under the tempered,
    untruncated distribution instead of -inf: a finite value (below every kept token's) that keeps
    the loss free of NaNs; the policy-mismatch weights see it as a train/inference gap.
    """
    tempered = _tempered(logits.float(), temperature)
    truncated = _truncate(tempered, temperature, top_p, top_k)
    logp = _gather_logprobs(truncated, targets)
    if truncated is tempered:
        return logp
    return torch.where(torch.isfinite(logp), logp, _gather_logprobs(tempered, targets))


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature < GREEDY_TEMPERATURE or temperature == 1.0:
        return logits
    return logits / temperature


def _truncate(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """Top-k then top-p masking; the input itself when neither applies (or when greedy)."""
    if temperature < GREEDY_TEMPERATURE:
        return logits
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = logits.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1.0 - top_p
        drop[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[targets] without materialising the whole log-softmax."""
    return logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
