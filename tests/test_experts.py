"""Routed experts: the grouped kernels equal a per-expert reference, in output and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ling_rl.models.ling_moe import Experts, grouped_ffn, looped_ffn
from ling_rl.models.tiny import TINY


def reference_experts(experts: Experts, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The plain computation: for each expert, a SwiGLU over exactly the tokens routed to it."""
    out = torch.zeros_like(x)
    for e in range(experts.gate_proj.shape[0]):
        token, slot = (expert_ids == e).nonzero(as_tuple=True)
        if len(token) == 0:
            continue
        xe = x[token]
        h = F.silu(xe @ experts.gate_proj[e].T) * (xe @ experts.up_proj[e].T)
        out = out.index_add(0, token, (h @ experts.down_proj[e].T) * weights[token, slot, None])
    return out


def _inputs(n: int, skip_expert: bool) -> tuple[Experts, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    experts = Experts(TINY)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(n, TINY.hidden_size, generator=g, requires_grad=True)
    e = TINY.num_experts - (1 if skip_expert else 0)  # one expert gets no token: empty group
    ids = torch.stack([torch.randperm(e, generator=g)[: TINY.num_experts_per_tok] for _ in range(n)])
    weights = torch.rand(n, TINY.num_experts_per_tok, generator=g, requires_grad=True)
    return experts, x, ids, weights


# fp32 sums in a different order (bmm vs per-expert matmul) differ by a few ulps on weight gradients.
def _grads(out: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return list(torch.autograd.grad(out, tensors, upstream))


@pytest.mark.parametrize("skip_expert", [False, True])
def test_module_output_and_gradients_equal_per_expert_reference(skip_expert: bool) -> None:
    experts, x, ids, w = _inputs(37, skip_expert)
    tensors = [x, w, experts.gate_proj, experts.up_proj, experts.down_proj]
    got = experts(x, ids, w)
    want = reference_experts(experts, x, ids, w)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    got_grads = _grads(got, tensors)
    for a, b in zip(got_grads, _grads(want, tensors)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if skip_expert:  # the expert no token was routed to gets an exactly zero gradient
        assert got_grads[2][-1].abs().sum() == 0


@pytest.mark.parametrize("kernel", [grouped_ffn, looped_ffn])
def test_both_kernels_agree_on_sorted_tokens(kernel) -> None:
    """`torch._grouped_mm` (the CUDA path) also runs on CPU, so both kernels are checked here."""
    experts, x, _, _ = _inputs(40, skip_expert=False)
    counts = torch.tensor([7, 0, 12, 1, 5, 9, 6, 0])
    tensors = [x, experts.gate_proj, experts.up_proj, experts.down_proj]
    got = kernel(x, counts, experts.gate_proj, experts.up_proj, experts.down_proj)
    parts, start = [], 0
    for e, c in enumerate(counts.tolist()):
        xe = x[start : start + c]
        parts.append((F.silu(xe @ experts.gate_proj[e].T) * (xe @ experts.up_proj[e].T)) @ experts.down_proj[e].T)
        start += c
    want = torch.cat(parts)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for a, b in zip(_grads(got, tensors), _grads(want, tensors)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
