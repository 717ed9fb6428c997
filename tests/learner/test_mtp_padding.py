"""MTP depths run on the trunk's token count (issue 22 item 6): depth d's last d positions are
right padding, so float8 GEMMs in the MTP layers see a multiple of 16 tokens whenever the trunk
does. The padding changes no value: the log-probs, the loss and its gradients equal the MTP
computed on the T-d real positions alone (how it was computed before)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ling_rl.models.ling_moe import LingForCausalLM
from ling_rl.models.tiny import TINY

CFG = replace(TINY, num_nextn_predict_layers=2)


def _unpadded_mtp(model: LingForCausalLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """Depth d on the T-d real positions only: position t combines h_t and the embedding of token t+d."""
    t = ids.shape[1]
    positions = torch.arange(t).expand_as(ids)
    embeds = model.model.word_embeddings(ids)
    h = model(ids).hidden
    out = []
    for d, mtp in enumerate(model.mtp_layers, start=1):
        h = mtp(h[:, :-1], embeds[:, d:], positions[:, d:])
        out.append(model.lm_head(h))
    return out


@pytest.mark.parametrize("length", [16, 21])
def test_mtp_padding_changes_no_value_or_gradient(length: int) -> None:
    torch.manual_seed(0)
    model = LingForCausalLM(CFG)
    model.init_weights()
    ids = torch.randint(0, CFG.vocab_size, (3, length))
    padded = model(ids, with_mtp=True).mtp_logits
    reference = _unpadded_mtp(model, ids)
    assert [p.shape for p in padded] == [(3, length - d, CFG.vocab_size) for d in (1, 2)]
    for p, r in zip(padded, reference, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-5)

    def loss(logits: list[torch.Tensor]) -> torch.Tensor:
        return sum(F.cross_entropy(lg[:, :-1].flatten(0, 1), ids[:, d + 1 :].flatten()) for d, lg in enumerate(logits, 1))

    params = [p for layer in model.mtp_layers for p in layer.parameters()] + [model.model.word_embeddings.weight]
    grads = torch.autograd.grad(loss(model(ids, with_mtp=True).mtp_logits), params)
    expected = torch.autograd.grad(loss(_unpadded_mtp(model, ids)), params)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_mtp_layers_see_the_trunks_token_count() -> None:
    """What float8 needs: every MTP linear's input has the trunk's B*T rows (a multiple of 16
    when the micro-batch is padded to one)."""
    torch.manual_seed(0)
    model = LingForCausalLM(CFG)
    model.init_weights()
    ids = torch.randint(0, CFG.vocab_size, (3, 16))
    rows: list[int] = []
    for layer in model.mtp_layers:
        for m in (layer.eh_proj, layer.attention.query_key_value, layer.attention.dense):
            m.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    model(ids, with_mtp=True)
    assert rows and set(rows) == {3 * 16}
