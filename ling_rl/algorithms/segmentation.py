"""Linguistic units for LPO: per-token unit ids from token ids (docs: Algorithms, segmentation).

A unit ends after the token that holds the last byte of a pause-punctuation delimiter. The
response is handled as bytes, never decoded: each token id maps to its exact byte string, the
bytes of a response are joined, one compiled regular expression finds the cut points (skipping
protected spans: code, LaTeX, decimals, list markers), and the byte offsets map back to tokens
with a binary search over the tokens' cumulative byte lengths. So

- a multi-byte character split over several byte-level BPE tokens (a full-width `。` is 3 bytes)
  ends the unit at the token holding its last byte;
- a token holding several characters (`".\\n\\n"`) ends the unit if it holds a delimiter;
- the work per response is a bytes join, one regex scan in C and a few numpy calls; the Python
  loop runs over cut points only, never over characters.

`Segmenter` is built once per tokenizer; `token_bytes_from_tokenizer` gives its input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ling_rl.algorithms.config import SegmentationConfig

# `.`, `,` and `:` between two digits are part of a number: 3.14, 1,000, 12:30.
_NUMBER_PUNCTUATION = frozenset({".", ",", ":"})

# An empty group right after a delimiter marks a cut; alternatives without a group are protected
# spans, matched only to be skipped.
_CUT = b"()"


def _alternatives(cfg: SegmentationConfig) -> list[bytes]:
    """Every alternative starts with a literal byte. That lets the regex engine jump straight to
    candidate bytes instead of trying each alternative at every position (2.4x faster segmentation
    on bench/segmentation.py)."""
    spans: list[bytes] = []
    if cfg.protect_code:
        spans += [
            rb"```.*?(?:```|\Z)",  # a fenced block; unclosed (truncated response) runs to the end
            rb"~~~.*?(?:~~~|\Z)",
            rb"`[^`\n]+`",  # inline code
        ]
    if cfg.protect_math:
        spans += [
            rb"\$\$.+?\$\$",
            rb"\\\[.+?\\\]",
            rb"\\\(.+?\\\)",
            # Pandoc's rule for inline math, which keeps "$5 and $10" out: no space after the
            # opening `$` nor before the closing one, and no digit right after it.
            rb"\$(?=[^\s$])[^$\n]*?[^\s$\\]\$(?![0-9])",
        ]
    if cfg.protect_numbers:
        # "2. " / "10) " opening a list item; the text gets a leading newline so this also
        # matches on the first line. The newline itself still cuts if it is a delimiter.
        newline_cut = _CUT if "\n" in cfg.delimiters else b""
        spans.append(rb"\n" + newline_cut + rb"[ \t]*[0-9]{1,3}[.)](?=[ \t])")
    cuts = []
    for delimiter in sorted(set(cfg.delimiters), key=len, reverse=True):  # longest first
        escaped = re.escape(delimiter.encode("utf-8"))
        if cfg.protect_numbers and delimiter in _NUMBER_PUNCTUATION:
            # Not (digit before and digit after); the lookbehind spans the digit and the mark.
            cuts.append(escaped + rb"(?:(?![0-9])|(?<![0-9]" + escaped + rb"))" + _CUT)
        else:
            cuts.append(escaped + _CUT)
    return spans + cuts


def compile_pattern(cfg: SegmentationConfig) -> re.Pattern[bytes]:
    """One scan: the engine takes the leftmost match, so a protected span that starts before a
    delimiter consumes it; at one position, spans are tried before delimiters."""
    return re.compile(b"|".join(_alternatives(cfg)), re.DOTALL)


class Segmenter:
    """Per-token unit ids for one tokenizer's vocabulary.

    token_bytes[i] is the exact byte string token id i stands for in a decoded response
    (b"" for special tokens); see `token_bytes_from_tokenizer`.
    """

    def __init__(self, token_bytes: Sequence[bytes], cfg: SegmentationConfig) -> None:
        self._token_bytes = list(token_bytes)
        self._lengths = np.fromiter((len(b) for b in self._token_bytes), dtype=np.int64, count=len(self._token_bytes))
        self._pattern = compile_pattern(cfg)
        self._min_unit_tokens = cfg.min_unit_tokens

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    def segment(self, token_ids: Sequence[int] | np.ndarray) -> list[int]:
        """Unit id (0..K-1, non-decreasing) of each token of one response; [] for an empty one."""
        return self._unit_ids(np.asarray(token_ids, dtype=np.int64)).tolist()

    def segment_batch(self, responses: Sequence[Sequence[int]]) -> list[list[int]]:
        """`segment` of each response; equal to segmenting them one by one."""
        return [self.segment(ids) for ids in responses]

    def segment_padded(self, token_ids: Tensor, response_mask: Tensor) -> Tensor:
        """[B, T] token ids and response mask -> [B, T] long unit ids (0 off the response).

        The response tokens of a row need not be contiguous: each contiguous run is segmented on
        its own, so no unit spans the tokens between two runs (a multi-turn episode's tool results),
        and unit ids keep counting up along the row.
        """
        if token_ids.shape != response_mask.shape or token_ids.ndim != 2:
            raise ValueError(
                f"token_ids and response_mask must both be [B, T]; got {tuple(token_ids.shape)} "
                f"and {tuple(response_mask.shape)}"
            )
        ids = token_ids.detach().cpu().numpy().astype(np.int64, copy=False)
        mask = response_mask.detach().cpu().numpy().astype(bool, copy=False)
        out = np.zeros(ids.shape, dtype=np.int64)
        for row in range(ids.shape[0]):
            positions = np.flatnonzero(mask[row])
            next_unit = 0
            for run in np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1):
                if len(run):
                    units = self._unit_ids(ids[row, run]) + next_unit
                    out[row, run] = units
                    next_unit = int(units[-1]) + 1
        return torch.from_numpy(out).to(token_ids.device)

    def _unit_ids(self, ids: np.ndarray) -> np.ndarray:
        n = len(ids)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= len(self._token_bytes):
            raise ValueError(f"token ids must lie in [0, {len(self._token_bytes)}); got {ids.min()}..{ids.max()}")
        text = b"\n" + b"".join(map(self._token_bytes.__getitem__, ids.tolist()))
        ends = np.cumsum(self._lengths[ids])
        # A cut's group starts right after the delimiter; - 2 for its last byte and the leading newline.
        cut_ends = [m.start(m.lastindex) for m in self._pattern.finditer(text) if m.lastindex]
        last_bytes = np.asarray(cut_ends, dtype=np.int64) - 2
        last_bytes = last_bytes[last_bytes >= 0]
        # Token j holds bytes [ends[j-1], ends[j]); the token holding byte p ends the unit.
        unit_ends = np.unique(np.searchsorted(ends, last_bytes, side="right"))
        if len(unit_ends) == 0 or unit_ends[-1] != n - 1:
            unit_ends = np.append(unit_ends, n - 1)  # trailing text without a delimiter
        unit_ends = self._merge_short(unit_ends, n)
        starts = np.zeros(n, dtype=np.int64)
        starts[unit_ends[:-1] + 1] = 1
        return np.cumsum(starts)

    def _merge_short(self, unit_ends: np.ndarray, n: int) -> np.ndarray:
        """Units shorter than min_unit_tokens join the next unit; a short last unit joins the previous."""
        lengths = np.diff(unit_ends, prepend=-1)
        if lengths.min() >= self._min_unit_tokens:
            return unit_ends
        kept: list[int] = []
        start = 0
        for end in unit_ends.tolist():
            if end + 1 - start >= self._min_unit_tokens:
                kept.append(end)
                start = end + 1
        if start < n:
            if kept:
                kept[-1] = n - 1
            else:
                kept.append(n - 1)
        return np.asarray(kept, dtype=np.int64)


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable stand-in character -> the byte it encodes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_steps(spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [step for inner in spec.get("decoders", []) for step in _decoder_steps(inner)]
    return [spec]


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes_from_tokenizer(tokenizer: Any) -> list[bytes]:
    """The byte string of every token id of a `tokenizers.Tokenizer` or a Hugging Face fast tokenizer.

    Handles the decoders real vocabularies use: ByteLevel (GPT-2 / Qwen / Ling: the stand-in
    alphabet maps back to raw bytes, so one character may span tokens), Metaspace and
    Replace("▁" -> " ") with ByteFallback (`<0xE3>` -> b"\\xe3"), WordPiece (`##` continues a word,
    other tokens start with a space), and none (tokens are joined with spaces, as `decode` does,
    e.g. a word-level vocabulary). Special tokens map to b"": they carry no text.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    spec = json.loads(backend.to_str())
    steps = _decoder_steps(spec.get("decoder"))
    kinds = {step.get("type") for step in steps}
    vocab: dict[str, int] = backend.get_vocab(with_added_tokens=True)
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    alphabet = _byte_level_alphabet()

    replacements: list[tuple[str, str]] = []
    for step in steps:
        if step.get("type") == "Metaspace":
            replacements.append((step.get("replacement", "\u2581"), " "))
        elif step.get("type") == "Replace" and "String" in step.get("pattern", {}):
            replacements.append((step["pattern"]["String"], step.get("content", "")))
    wordpiece_prefix = next((s.get("prefix", "##") for s in steps if s.get("type") == "WordPiece"), None)

    def to_bytes(text: str) -> bytes:
        if "ByteLevel" in kinds:
            return bytes(alphabet[ch] for ch in text) if all(ch in alphabet for ch in text) else text.encode()
        if "ByteFallback" in kinds:
            match = _BYTE_FALLBACK.fullmatch(text)
            if match:
                return bytes([int(match.group(1), 16)])
        for old, new in replacements:
            text = text.replace(old, new)
        if wordpiece_prefix is not None:
            return text[len(wordpiece_prefix) :].encode() if text.startswith(wordpiece_prefix) else b" " + text.encode()
        if not steps:
            return b" " + text.encode()
        return text.encode()

    size = max(vocab.values(), default=-1) + 1
    table = [b""] * size
    for text, token_id in vocab.items():
        entry = added.get(token_id)
        if entry is not None:
            table[token_id] = b"" if entry.get("special") else entry["content"].encode()
        else:
            table[token_id] = to_bytes(text)
    return table
