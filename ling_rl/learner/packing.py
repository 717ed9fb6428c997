"""Padding-free micro-batches: the rows of a right-padded micro-batch laid end to end.

    pack = Pack.of(lengths, t)                        # lengths [B]: real tokens per row
    out = model(pack.pack(ids), positions=pack.positions, seq_lens=pack.seq_lens, ...)
    logp = pack.unpack(packed_logp)                   # back to [B, T]: the losses are unchanged

The model computes only real tokens: the pack is [1, N] with N = sum(lengths) (rounded up to
`multiple`, the extra positions one padding sequence of their own), positions restart at 0 in
every row, and attention stays within each row (`ling_rl.models.ling_moe.Attention`). Every
per-token output is unpacked to the padded layout, so whatever reads the rows (the policy loss,
LPO units, GSPO's sequences, the MTP loss, metrics) is the same code on either path; positions
past a row's length come back as `fill` (never read: they are outside the response mask).

A row's tokens stay in order and rows stay in order, so token j of the pack is row b's token t
with `index[j] = b * T + t` (the real tokens, row-major).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Pack:
    rows: int
    """B: rows of the padded micro-batch."""
    length: int
    """T: positions of the padded micro-batch."""
    index: torch.Tensor
    """[n] long: flat padded position (b * T + t) of each real token, in pack order."""
    positions: torch.Tensor
    """[1, N] long: each token's position within its row (the padding sequence counts from 0 too)."""
    seq_lens: list[int]
    """Lengths of the sequences of the pack in order (the rows, then the padding when N > n); sum N."""

    @classmethod
    def of(cls, lengths: torch.Tensor, length: int, multiple: int = 1) -> Pack:
        """The pack of rows with `lengths` [B] (each in 1..`length`) real tokens, its size rounded
        up to a multiple of `multiple` (float8 GEMMs on CUDA need 16: the pack is padded, not each row)."""
        lengths = lengths.long()
        if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > length):
            raise ValueError(f"row lengths must be in 1..{length}, got {lengths.tolist()}")
        steps = torch.arange(length, device=lengths.device)
        valid = steps[None, :] < lengths[:, None]
        index = valid.reshape(-1).nonzero().squeeze(1)
        n = index.numel()
        total = -(-max(n, 1) // multiple) * multiple
        positions = torch.cat([steps.expand(len(lengths), length).reshape(-1)[index],
                               torch.arange(total - n, device=lengths.device)])
        seq_lens = lengths.tolist() + ([total - n] if total > n else [])
        return cls(rows=len(lengths), length=length, index=index, positions=positions[None], seq_lens=seq_lens)

    @property
    def tokens(self) -> int:
        """N: positions of the pack, padding included."""
        return int(self.positions.shape[1])

    @property
    def starts(self) -> torch.Tensor:
        """[1, N] bool: the first position of each sequence (no token before it in its row)."""
        return self.positions == 0

    def pack(self, x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """[B, T, ...] -> [1, N, ...]: the real tokens end to end, then `fill` up to N."""
        flat = x.reshape(self.rows * self.length, *x.shape[2:])[self.index]
        pad = flat.new_full((self.tokens - flat.shape[0], *x.shape[2:]), fill)
        return torch.cat([flat, pad])[None]

    def unpack(self, x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """[1, N', ...] (N' <= N: outputs over the first N' positions) -> [B, T, ...], `fill` past
        each row's length (and where N' ends). Differentiable in `x`."""
        n = self.index.numel()
        x = x[0]
        if x.shape[0] < n:
            x = F.pad(x, (0, 0) * (x.dim() - 1) + (0, n - x.shape[0]), value=fill)
        out = x.new_full((self.rows * self.length, *x.shape[1:]), fill)
        return out.index_put((self.index,), x[:n]).view(self.rows, self.length, *x.shape[1:])
