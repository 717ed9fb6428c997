"""Tokenizers for the segmentation tests, built locally (nothing is downloaded)."""

from __future__ import annotations

import re

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. It was 3.14 metres away, or so they said!",
    "First, compute the sum: $x^2 + y^2 = z^2$. Then, divide by 2; the result is 12.5.",
    "```python\ndef f(x):\n    return x.mean()\n```\nThe function above returns a mean.",
    "const a = [1, 2, 3]; console.log(a.map((v) => v * 2));",
    "我们今天学习数学。首先，计算面积；然后，求体积！你明白了吗？",
    "1. Read the question.\n2. Solve it.\n3. Check the answer, twice.",
] * 20


class WordTokenizer:
    """Words, single whitespace characters and single punctuation marks: unit texts stay readable."""

    def __init__(self) -> None:
        self.vocab: dict[bytes, int] = {}

    def encode(self, text: str) -> list[int]:
        pieces = re.findall(r"\w+|\s|[^\w\s]", text)
        return [self.vocab.setdefault(p.encode(), len(self.vocab)) for p in pieces]

    def token_bytes(self) -> list[bytes]:
        table = [b""] * len(self.vocab)
        for piece, token_id in self.vocab.items():
            table[token_id] = piece
        return table


@pytest.fixture
def word_tokenizer() -> WordTokenizer:
    return WordTokenizer()


@pytest.fixture(scope="session")
def byte_bpe() -> Tokenizer:
    """A small GPT-2-style byte-level BPE: CJK characters split into partial-byte tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    return tokenizer
