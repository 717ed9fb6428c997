"""Generate the shipped arithmetic word-problem task: `train.jsonl` and a held-out `eval.jsonl`.

Each row: id, prompt, answer (an integer as text), solution (a step-by-step chain of thought for
DFT), difficulty (1-4 = number of operations). Deterministic from the seed; eval prompts never
appear in train.

    python data/arith/generate.py --train 4000 --eval 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ann", "Bob", "Carla", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "June"]
ITEMS = ["apples", "books", "coins", "marbles", "pens", "stickers", "cards", "eggs", "shells", "stamps"]


def make_problem(rng: random.Random, difficulty: int) -> dict[str, object]:
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, 20)
    story = [f"{who} has {value} {item}."]
    steps = []
    for _ in range(difficulty):
        op = rng.choice(["buy", "give", "double"] if value < 200 else ["give"])
        if op == "buy":
            k = rng.randint(1, 20)
            story.append(f"{who} buys {k} more.")
            steps.append(f"{value} + {k} = {value + k}.")
            value += k
        elif op == "give" and value > 1:
            k = rng.randint(1, value - 1)
            story.append(f"{who} gives away {k}.")
            steps.append(f"{value} - {k} = {value - k}.")
            value -= k
        else:
            story.append(f"{who} doubles them.")
            steps.append(f"{value} * 2 = {value * 2}.")
            value *= 2
    prompt = " ".join(story) + f" How many {item} does {who} have now?"
    solution = " ".join(steps) + f" The answer is {value}."
    return {"prompt": prompt, "answer": str(value), "solution": solution, "difficulty": difficulty}


def generate(n_train: int, n_eval: int, seed: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict[str, object]] = []
    while len(rows) < n_train + n_eval:
        row = make_problem(rng, difficulty=1 + len(rows) % 4)
        if row["prompt"] in seen:
            continue
        seen.add(str(row["prompt"]))
        rows.append(row)
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["id"] = f"arith-{i}"
    return rows[n_eval:], rows[:n_eval]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    train, held_out = generate(args.train, args.eval, args.seed)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held_out)):
        with open(args.out / name, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"wrote {len(rows)} rows to {args.out / name}")


if __name__ == "__main__":
    main()
