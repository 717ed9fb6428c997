"""Segmentation throughput (tokens/s) on a realistic batch with a byte-level BPE tokenizer.

    python bench/segmentation.py [--batch 512] [--tokens 1024] [--vocab 8000]

Trains a GPT-2-style byte-level BPE locally with `tokenizers` on generated reasoning-style text
(English prose with numbers, LaTeX, Python/JS code blocks, lists, Chinese), builds a `Segmenter`
once, and times `segment_padded` on a [batch, tokens] padded batch of responses (and the
one-time `Segmenter` construction, which precomputes the per-token-id byte strings and lengths).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ling_rl.algorithms import SegmentationConfig, Segmenter, token_bytes_from_tokenizer

WORDS = (
    "the a we let so then first next compute value sum area answer equation number function problem "
    "step check result gives because therefore since both each side angle triangle circle radius "
    "probability expected integer prime factor divide multiply add subtract total equals"
).split()
CJK = "我们首先计算这个问题的答案然后检查结果因为所以面积体积概率三角形圆半径整数"
CJK_PUNCT = "，。；！？、"


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
    if rng.random() < 0.4:
        words.insert(rng.randrange(len(words)), f"{rng.randint(0, 999)}.{rng.randint(0, 99)}")
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), f"$x_{rng.randint(1, 9)}^2 + {rng.randint(1, 9)}.5 = y$")
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), rng.choice(["`np.mean(a)`", "`x.sum()`", "`f(a, b)`"]))
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ",", ";", ":", "!", "?"])


def code_block(rng: random.Random) -> str:
    if rng.random() < 0.5:
        body = "\n".join(f"    total += values[{i}] * {rng.random():.3f}" for i in range(rng.randint(2, 6)))
        return f"```python\ndef f(values):\n    total = 0.0\n{body}\n    return total\n```"
    body = "\n".join(f"  a.push({rng.randint(0, 99)}, {rng.randint(0, 99)});" for _ in range(rng.randint(2, 6)))
    return f"```js\nconst a = [];\n{body}\nconsole.log(a.length);\n```"


def chinese(rng: random.Random) -> str:
    return "".join(rng.choice(CJK) + (rng.choice(CJK_PUNCT) if rng.random() < 0.12 else "") for _ in range(40))


def response(rng: random.Random, approx_chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < approx_chars:
        roll = rng.random()
        if roll < 0.08:
            part = code_block(rng)
        elif roll < 0.15:
            part = chinese(rng)
        elif roll < 0.22:
            part = "\n".join(f"{i}. {sentence(rng)}" for i in range(1, rng.randint(2, 5)))
        else:
            part = " ".join(sentence(rng) for _ in range(rng.randint(1, 4)))
        parts.append(part)
        size += len(part)
    return "\n\n".join(parts)


def train_tokenizer(corpus: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    tokenizer = train_tokenizer([response(rng, 3000) for _ in range(300)], args.vocab)

    rows = []
    for _ in range(args.batch):
        ids = tokenizer.encode(response(rng, args.tokens * 6)).ids
        rows.append(ids[: rng.randint(args.tokens // 2, args.tokens)])
    ids = torch.zeros(args.batch, args.tokens, dtype=torch.long)
    mask = torch.zeros(args.batch, args.tokens, dtype=torch.bool)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = True
    n_tokens = int(mask.sum())

    start = time.perf_counter()
    segmenter = Segmenter(token_bytes_from_tokenizer(tokenizer), SegmentationConfig())
    build = time.perf_counter() - start

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        units = segmenter.segment_padded(ids, mask)
        times.append(time.perf_counter() - start)
    best = min(times)
    n_units = sum(int(units[b, mask[b]].max()) + 1 for b in range(args.batch) if mask[b].any())
    print(f"byte-level BPE vocab {tokenizer.get_vocab_size()}; batch {args.batch} x {args.tokens} "
          f"({n_tokens} response tokens); Segmenter built in {build * 1e3:.0f} ms")
    print(f"segment_padded: {best * 1e3:.0f} ms per batch (best of {args.repeats}) = "
          f"{n_tokens / best / 1e6:.2f} M tokens/s; {n_units / args.batch:.1f} units per response, "
          f"mean unit length {n_tokens / n_units:.1f} tokens")


if __name__ == "__main__":
    main()
