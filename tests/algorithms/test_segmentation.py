"""Segmentation into linguistic units: the spec's cases, byte-level BPE details, tokenizer helpers."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ling_rl.algorithms import SegmentationConfig, Segmenter, token_bytes_from_tokenizer


def unit_texts(tokenizer, text: str, **cfg: object) -> list[str]:
    ids = tokenizer.encode(text)
    table = tokenizer.token_bytes()
    unit_ids = Segmenter(table, SegmentationConfig(**cfg)).segment(ids)
    assert unit_ids == sorted(unit_ids) and (not unit_ids or set(unit_ids) == set(range(unit_ids[-1] + 1)))
    texts: list[bytes] = []
    for token_id, unit in zip(ids, unit_ids):
        if unit == len(texts):
            texts.append(b"")
        texts[unit] += table[token_id]
    return [t.decode() for t in texts]


CASES = {
    "english prose": (
        "Hello world. This is it! Is it? Yes; no: maybe, fine",
        ["Hello world.", " This is it!", " Is it?", " Yes;", " no:", " maybe,", " fine"],
    ),
    "numbers and decimals": (
        "Pi is 3.14, e is 2.718. We counted 1,000 birds at 12:30. It costs 5.",
        ["Pi is 3.14,", " e is 2.718.", " We counted 1,000 birds at 12:30.", " It costs 5."],
    ),
    "numbered list": (
        "Steps:\n1. Read it.\n2. Solve it.\n10) Check.",
        ["Steps:", "\n", "1. Read it.", "\n", "2. Solve it.", "\n", "10) Check."],
    ),
    "latex math": (
        "So $a.b, c$ holds. Then \\(x;y\\) and \\[p.q\\] and $$r, s$$ done. It costs $5, or $10.",
        ["So $a.b, c$ holds.", " Then \\(x;y\\) and \\[p.q\\] and $$r, s$$ done.", " It costs $5,", " or $10."],
    ),
    "python code block": (
        "Here:\n```python\nx = 1.5\nprint(x, y)\n```\nDone.",
        ["Here:", "\n", "```python\nx = 1.5\nprint(x, y)\n```\n", "Done."],
    ),
    "js inline code and block": (
        "Use `arr.map(f)` here, then:\n```js\nconst a = [1, 2];\nconsole.log(a);\n```",
        ["Use `arr.map(f)` here,", " then:", "\n", "```js\nconst a = [1, 2];\nconsole.log(a);\n```"],
    ),
    "unclosed fence protects to the end": (
        "Code:\n```js\nlet x = 1;\nlet y",
        ["Code:", "\n", "```js\nlet x = 1;\nlet y"],
    ),
    "chinese": (
        "你好，世界。这是测试！好吗？苹果、香蕉；完",
        ["你好，", "世界。", "这是测试！", "好吗？", "苹果、", "香蕉；", "完"],
    ),
    "no punctuation": ("a response with no punctuation at all", ["a response with no punctuation at all"]),
    "empty": ("", []),
}


@pytest.mark.parametrize("name", CASES)
def test_cases_one_token_units_allowed(word_tokenizer, name: str) -> None:
    text, expected = CASES[name]
    assert unit_texts(word_tokenizer, text, min_unit_tokens=1) == expected


def test_short_units_merge_into_the_next(word_tokenizer) -> None:
    # The default min_unit_tokens = 2: each lone "\n" joins the list item after it.
    assert unit_texts(word_tokenizer, "Steps:\n1. Read it.\n2. Solve it.") == ["Steps:", "\n1. Read it.", "\n2. Solve it."]
    # A short last unit joins the previous one; a response of one short unit stays one unit.
    assert unit_texts(word_tokenizer, "It is done. X", min_unit_tokens=3) == ["It is done. X"]
    assert unit_texts(word_tokenizer, "Ok", min_unit_tokens=3) == ["Ok"]
    assert unit_texts(word_tokenizer, "A. B. C D E. F", min_unit_tokens=3) == ["A. B.", " C D E. F"]


def test_protection_can_be_switched_off(word_tokenizer) -> None:
    text = "Pi is 3.14 and `a.b` ok"
    assert unit_texts(word_tokenizer, text, min_unit_tokens=1) == [text]
    off = unit_texts(word_tokenizer, text, min_unit_tokens=1, protect_numbers=False, protect_code=False)
    assert off == ["Pi is 3.", "14 and `a.", "b` ok"]
    assert unit_texts(word_tokenizer, "$a.b$ c", min_unit_tokens=1, protect_math=False) == ["$a.", "b$ c"]


def test_custom_delimiters(word_tokenizer) -> None:
    text = "One. Two\nThree; four"
    assert unit_texts(word_tokenizer, text, min_unit_tokens=1, delimiters=["\n"]) == ["One. Two\n", "Three; four"]
    assert unit_texts(word_tokenizer, "a -- b -- c", min_unit_tokens=1, delimiters=["--"]) == ["a --", " b --", " c"]


# --- byte-level details ------------------------------------------------------------------------


def test_a_character_split_over_tokens_ends_the_unit_at_its_last_byte() -> None:
    # "你好。ok": the full-width stop (e3 80 82) is split over three tokens; the third also holds "ok".
    table = ["你".encode(), "好".encode() + b"\xe3", b"\x80", b"\x82", b"ok", b" next"]
    assert Segmenter(table, SegmentationConfig(min_unit_tokens=1)).segment([0, 1, 2, 3, 5]) == [0, 0, 0, 0, 1]
    table[3] = b"\x82ok"
    assert Segmenter(table, SegmentationConfig(min_unit_tokens=1)).segment([0, 1, 2, 3, 5]) == [0, 0, 0, 0, 1]
    # Without the last byte the stop is incomplete: no cut.
    assert Segmenter(table, SegmentationConfig(min_unit_tokens=1)).segment([0, 1, 2, 5]) == [0, 0, 0, 0]


def test_a_multi_character_token_containing_a_delimiter_ends_the_unit() -> None:
    table = [b"Hi", b".\n\nThe", b" end", b" 3", b".", b"14"]
    seg = Segmenter(table, SegmentationConfig(min_unit_tokens=1))
    assert seg.segment([0, 1, 2]) == [0, 0, 1]
    # A decimal point split into its own token between digit tokens still does not cut.
    assert seg.segment([0, 3, 4, 5, 2]) == [0, 0, 0, 0, 0]


def test_special_tokens_carry_no_text_and_never_cut(byte_bpe: Tokenizer) -> None:
    table = token_bytes_from_tokenizer(byte_bpe)
    eos = byte_bpe.token_to_id("<|endoftext|>")
    assert table[eos] == b""
    ids = byte_bpe.encode("Done. Really").ids + [eos]
    seg = Segmenter(table, SegmentationConfig(min_unit_tokens=1)).segment(ids)
    assert seg[-1] == seg[-2]


BPE_TEXTS = [text for text, _ in CASES.values()] + ["Emoji 🙂, then 日本語。", "x = 1.5;\ny = 2"]


@pytest.mark.parametrize("text", BPE_TEXTS)
def test_byte_level_bpe_cuts_at_the_tokens_holding_the_byte_level_cuts(byte_bpe: Tokenizer, text: str) -> None:
    # Reference: segment the same text with one token per byte; every BPE unit must end at the
    # BPE token that holds the last byte of a byte-level unit.
    table = token_bytes_from_tokenizer(byte_bpe)
    ids = byte_bpe.encode(text).ids
    assert b"".join(table[i] for i in ids) == text.encode()
    cfg = SegmentationConfig(min_unit_tokens=1)
    bpe_units = Segmenter(table, cfg).segment(ids)
    data = text.encode()
    byte_units = Segmenter([bytes([b]) for b in range(256)], cfg).segment(list(data))
    byte_cuts = {i for i in range(len(data) - 1) if byte_units[i] != byte_units[i + 1]}
    ends, offset = [], 0
    for i in ids:
        offset += len(table[i])
        ends.append(offset - 1)
    expected = {j for j, end in enumerate(ends[:-1]) if any(ends[j - 1] < c <= end if j else c <= end for c in byte_cuts)}
    got = {j for j in range(len(ids) - 1) if bpe_units[j] != bpe_units[j + 1]}
    assert got == expected


# --- padded batches and bad input --------------------------------------------------------------


def test_segment_padded_matches_segment_per_row(word_tokenizer) -> None:
    texts = ["One. Two, three.", "你好，世界。", "", "no cut here"]
    rows = [word_tokenizer.encode(t) for t in texts]
    seg = Segmenter(word_tokenizer.token_bytes(), SegmentationConfig(min_unit_tokens=1))
    prompt, length = 3, 3 + max(len(r) for r in rows) + 2
    ids = torch.full((len(rows), length), 7, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, row in enumerate(rows):
        ids[b, prompt : prompt + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, prompt : prompt + len(row)] = True
    out = seg.segment_padded(ids, mask)
    assert out.dtype == torch.long and out.shape == ids.shape
    for b, row in enumerate(rows):
        assert out[b, mask[b]].tolist() == seg.segment(row)
        assert torch.all(out[b, ~mask[b]] == 0)
    assert seg.segment_batch(rows) == [seg.segment(r) for r in rows]


def test_units_never_span_the_gap_between_response_runs(word_tokenizer) -> None:
    """A multi-turn episode's row: two sampled turns with a tool result (masked) between them.
    Each turn is segmented on its own; without the split, the unit open at the end of the first
    turn ("no cut") would run on into the second turn, across the tool result."""
    first, tool, second = (word_tokenizer.encode(t) for t in ("One. no cut", "Result: 42.", "so two. Done."))
    seg = Segmenter(word_tokenizer.token_bytes(), SegmentationConfig(min_unit_tokens=1))
    ids = torch.tensor([first + tool + second], dtype=torch.long)
    mask = torch.tensor([[True] * len(first) + [False] * len(tool) + [True] * len(second)])
    out = seg.segment_padded(ids, mask)[0]
    a, b = seg.segment(first), seg.segment(second)
    assert out[: len(first)].tolist() == a
    assert out[len(first) + len(tool):].tolist() == [u + a[-1] + 1 for u in b]
    assert torch.all(out[len(first): len(first) + len(tool)] == 0)


def test_bad_input_is_refused(word_tokenizer) -> None:
    seg = Segmenter([b"a", b"."], SegmentationConfig())
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        seg.segment([0, 5])
    with pytest.raises(ValueError, match="response_mask"):
        seg.segment_padded(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))


# --- token_bytes_from_tokenizer ----------------------------------------------------------------


def test_hf_fast_tokenizer_wrapping_a_byte_level_bpe(byte_bpe: Tokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=byte_bpe)
    assert token_bytes_from_tokenizer(hf) == token_bytes_from_tokenizer(byte_bpe)


def test_word_level_vocabulary_joins_with_spaces() -> None:
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, ".": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["[UNK]"])
    table = token_bytes_from_tokenizer(tokenizer)
    assert table == [b"", b" hello", b" world", b" ."]
    ids = tokenizer.encode("hello world . hello").ids
    assert Segmenter(table, SegmentationConfig(min_unit_tokens=1)).segment(ids) == [0, 0, 0, 1]


def test_metaspace_vocabulary() -> None:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False)
    tokenizer.train_from_iterator(["Hello there. General Kenobi, you are a bold one."] * 10, trainer)
    table = token_bytes_from_tokenizer(tokenizer)
    text = "Hello there. General Kenobi"
    ids = tokenizer.encode(text).ids
    assert b"".join(table[i] for i in ids) == b" " + text.encode()
    units = Segmenter(table, SegmentationConfig(min_unit_tokens=1)).segment(ids)
    assert units[0] == 0 and units[-1] == 1


def test_byte_fallback_and_wordpiece_vocabularies() -> None:
    pieces = ["<unk>", "\u2581the", "\u2581cat"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["\u2581", "t", "h", "e", "c", "a", "\u2581t", "\u2581th", "\u2581c", "\u2581ca"]
    merges = [("\u2581", "t"), ("\u2581t", "h"), ("\u2581th", "e"), ("\u2581", "c"), ("\u2581c", "a"), ("\u2581ca", "t")]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    table = token_bytes_from_tokenizer(tokenizer)
    ids = tokenizer.encode("the cat。").ids
    assert ids[:2] == [1, 2] and len(ids) == 5  # "。" falls back to its three bytes
    assert b"".join(table[i] for i in ids) == " the cat。".encode()
    assert table[3 + 0xE3] == b"\xe3"

    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "play": 1, "##ing": 2, ".": 3}, unk_token="[UNK]"))
    wp.decoder = decoders.WordPiece()
    assert token_bytes_from_tokenizer(wp)[1:] == [b" play", b"ing", b" ."]
