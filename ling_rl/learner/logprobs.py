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

`chunked_token_logprobs` computes the same from the final hidden states and the lm_head weight,
a chunk of tokens at a time, so that the [tokens, vocab] logits of a whole micro-batch never exist
at once: with a 157k vocabulary, 8k tokens of fp32 logits are 5 GB, and top-p's sort and masks
several times that. Its backward recomputes each chunk's logits instead of keeping them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

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
    return _logprobs_and_entropy(logits, targets, temperature, top_p, top_k, with_entropy=False)[0]


class TokenLogprobs(NamedTuple):
    logprobs: torch.Tensor
    """[...] float32 log-prob of each target (as `token_logprobs`)."""
    entropy: torch.Tensor | None
    """[...] float32 entropy of the processed distribution at each position (no gradient), when asked."""


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                           top_p: float = 1.0, top_k: int = -1, chunk_tokens: int = 1024,
                           with_entropy: bool = False) -> TokenLogprobs:
    """`token_logprobs(F.linear(hidden, weight), targets, ...)` for `hidden` [..., H] and the lm_head
    `weight` [V, H], computed `chunk_tokens` positions at a time in forward and in backward: at most
    one chunk's logits (and their top-k / top-p temporaries) exist at once. Gradients flow to
    `hidden` and `weight`; the weight's is accumulated over the chunks in float32 (for a bf16
    weight, one float32 [V, H] buffer during backward: 1.2 GiB for Ling-mini's 157k x 2048 head).

    `with_entropy`: also the entropy of the processed distribution at each position (a metric,
    computed in the same chunks, no gradient)."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    sampling = (temperature, top_p, top_k)
    logp, entropy = _ChunkedLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets, sampling,
                                           chunk_tokens, with_entropy)
    return TokenLogprobs(logp, entropy if with_entropy else None)


class _ChunkedLogprobs(torch.autograd.Function):
    """Chunked lm_head + processed log-probs; backward recomputes each chunk (a per-chunk
    activation checkpoint that writes the hidden-state gradient in place, not as a sum of
    zero-padded slices, and accumulates the weight gradient in float32)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                sampling: tuple[float, float, int], chunk: int,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # hidden [N, H]; targets in the outputs' shape (N elements). The outputs are allocated in
        # that shape and filled chunk by chunk: not views, which FSDP2 warns about in a model's output.
        logp = hidden.new_empty(targets.shape, dtype=torch.float32)
        entropy = hidden.new_empty(targets.shape if with_entropy else (0,), dtype=torch.float32)
        targets = targets.reshape(-1)
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            logits = F.linear(hidden[start:end], weight)
            chunk_logp, chunk_entropy = _logprobs_and_entropy(logits, targets[start:end], *sampling, with_entropy)
            logp.view(-1)[start:end] = chunk_logp
            if chunk_entropy is not None:
                entropy.view(-1)[start:end] = chunk_entropy
        ctx.save_for_backward(hidden, weight, targets)
        ctx.sampling, ctx.chunk = sampling, chunk
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, _grad_entropy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets = ctx.saved_tensors
        grad_logp = grad_logp.reshape(-1)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            end = start + ctx.chunk
            h = hidden[start:end]
            logits = F.linear(h, weight).detach().requires_grad_(True)  # recomputed; the graph starts here
            with torch.enable_grad():
                logp, _ = _logprobs_and_entropy(logits, targets[start:end], *ctx.sampling, with_entropy=False)
                (grad_logits,) = torch.autograd.grad(logp, logits, grad_logp[start:end])
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits @ weight
            if grad_weight is None:
                continue
            if grad_logits.dtype == torch.float32:
                grad_weight.addmm_(grad_logits.t(), h)  # no [V, H] temporary
            else:  # bf16: each chunk's product rounds once, the sum over chunks stays in float32
                grad_weight += grad_logits.t() @ h
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def _logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float, top_p: float, top_k: int,
                          with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    tempered = _tempered(logits.float(), temperature)
    truncated = _truncate(tempered, temperature, top_p, top_k)
    entropy = _entropy(truncated) if with_entropy else None
    logp = _gather_logprobs(truncated, targets)
    if truncated is tempered:
        return logp, entropy
    return torch.where(torch.isfinite(logp), logp, _gather_logprobs(tempered, targets)), entropy


@torch.no_grad()
def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """-sum p log p = logsumexp(z) - sum p z, over the tokens not excluded (p = 0 at -inf)."""
    probs = logits.softmax(-1)
    return logits.logsumexp(-1) - (probs * logits.masked_fill(probs == 0, 0.0)).sum(-1)


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
