"""Generate the multi-sentence reasoning task (issue 13): arithmetic word problems answered with
visible reasoning, one sentence per step.

    python data/reasoning/generate.py            # writes the four files next to this script

A problem is a story of `steps` events over a starting amount; the reference solution restates the
start, then writes one sentence per event and a final one:

    prompt:   Ann has 14 cards. Ann gives away 6. Ann finds 7 more. How many cards does Ann have now?
    solution: Ann has 14. Ann gives away 6, so 14 - 6 = 8. Ann finds 7, so 8 + 7 = 15. The answer is 15.

So a response has steps + 2 sentences. Difficulty is the number of steps and the size of the numbers:

- `train.jsonl`  RL prompts, in distribution (ID): 2-5 steps, changes of 1-9, amounts <= 40 (4-7 sentences).
- `eval.jsonl`   held-out ID prompts, same distribution.
- `ood.jsonl`    held-out out-of-distribution prompts: 6-7 steps, changes up to 12 and amounts up to 50
                 (8-9 sentences): longer chains and arithmetic facts the ID splits never show.
- `dft.jsonl`    the SFT traces of the DFT warm start, imperfect the way real SFT data is (below).

Every row: id, prompt, answer (the correct final amount), solution (the reference trace), steps,
max_number (the largest amount in the problem), split. `dft.jsonl` rows carry the trace to imitate
instead: `solution` is that trace, `answer` the answer the trace reaches (wrong when the trace is),
`correct_answer` the true one, and `flaws` lists what is wrong with the trace:

- `misread`: "loses k" is read as a gain ("so 8 + 3 = 11") in MISREAD_SHARE of its occurrences, and
  the rest of the trace follows from the wrong amount. Systematic: a policy that imitates the data
  takes the majority reading at greedy decoding, so every problem with a loss goes wrong.
- `slip`: one step's result is off by 1-3 (SLIP_SHARE of traces), the rest follows.
- `verbose`: a redundant re-check sentence after every step ("Then check: 8 + 6 = 14."), in
  VERBOSE_SHARE of traces, so the imitating policy is longer than it needs to be.

and `style` says how the steps are written: `full` (the reference's "Ann gives away 6, so 14 - 6 =
8.") or, in TERSE_SHARE of traces, `terse` (the bare equation "14 - 6 = 8."). Both are equally
right; terse traces are ~30% shorter. Real SFT data mixes styles like this, and it is what gives
Evo-CoT's length term something to choose that a correctness reward does not: the imitating policy
can write either, and only a reward for brevity prefers the shorter one.

All prompts are distinct across the four files (eval and OOD prompts never reach DFT or RL).
Numbers 1-106 are single tokens of the tiny tokenizer (ling_rl/models/tiny.py), so every amount here
is one token. Deterministic from `--seed`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

# The tiny tokenizer's corpus uses these names and items (ling_rl/models/tiny.py): one token each.
NAMES = ["Ann", "Bob", "Carla", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "June"]
ITEMS = ["apples", "books", "coins", "marbles", "pens", "stickers", "cards", "eggs", "shells", "stamps"]

# event -> (story sentence, solution clause, sign of the change)
EVENTS: dict[str, tuple[str, str, int]] = {
    "buys": ("{who} buys {k} more.", "{who} buys {k}", +1),
    "finds": ("{who} finds {k} more.", "{who} finds {k}", +1),
    "gives": ("{who} gives away {k}.", "{who} gives away {k}", -1),
    "loses": ("{who} loses {k}.", "{who} loses {k}", -1),
}

MISREAD_EVENT = "loses"
MISREAD_SHARE = 0.6
SLIP_SHARE = 0.1
VERBOSE_SHARE = 0.6
TERSE_SHARE = 0.3


@dataclass(frozen=True)
class Level:
    """A difficulty level: how many steps, and the range of the amounts."""

    min_steps: int
    max_steps: int
    start: tuple[int, int]
    """Range of the starting amount."""
    change: tuple[int, int]
    """Range of one event's amount k."""
    cap: int
    """No amount (start, k, or running total) exceeds this."""


ID_LEVEL = Level(min_steps=2, max_steps=5, start=(5, 25), change=(1, 9), cap=40)
OOD_LEVEL = Level(min_steps=6, max_steps=7, start=(10, 30), change=(1, 12), cap=50)


@dataclass(frozen=True)
class Problem:
    who: str
    item: str
    start: int
    events: tuple[tuple[str, int], ...]
    """(event name, k) in story order."""

    @property
    def prompt(self) -> str:
        story = [f"{self.who} has {self.start} {self.item}."]
        story += [EVENTS[name][0].format(who=self.who, k=k) for name, k in self.events]
        return " ".join(story) + f" How many {self.item} does {self.who} have now?"

    def amounts(self) -> list[int]:
        """The running amount after the start and after each event (the true values)."""
        values = [self.start]
        for name, k in self.events:
            values.append(values[-1] + EVENTS[name][2] * k)
        return values

    @property
    def answer(self) -> int:
        return self.amounts()[-1]

    @property
    def max_number(self) -> int:
        return max([*self.amounts(), *(k for _, k in self.events)])


def make_problem(rng: random.Random, level: Level) -> Problem:
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    steps = rng.randint(level.min_steps, level.max_steps)
    start = value = rng.randint(*level.start)
    events: list[tuple[str, int]] = []
    for _ in range(steps):
        name = rng.choice(list(EVENTS))
        sign = EVENTS[name][2]
        low, high = level.change
        # Keep the running amount in [1, cap]: switch to the other sign when this one cannot fit.
        if sign > 0 and value + low > level.cap or sign < 0 and value - low < 1:
            name = rng.choice([n for n, e in EVENTS.items() if e[2] == -sign])
            sign = -sign
        high = min(high, level.cap - value) if sign > 0 else min(high, value - 1)
        k = rng.randint(low, high)
        events.append((name, k))
        value += sign * k
    return Problem(who=who, item=item, start=start, events=tuple(events))


def trace(problem: Problem, misread: set[int] = frozenset(), slip: tuple[int, int] | None = None,
          verbose: bool = False, terse: bool = False) -> tuple[str, int]:
    """A solution trace and the answer it reaches.

    `misread`: indices of events read with the wrong sign; `slip`: (event index, offset added to
    that step's result); `verbose`: a re-check sentence after each step; `terse`: each step as the
    bare equation, without restating the event. Later steps always follow
    from the amount the trace has, so a wrong step carries through to the answer.
    """
    who = problem.who
    value = problem.start
    sentences = [f"{who} has {value}."]
    for i, (name, k) in enumerate(problem.events):
        sign = EVENTS[name][2] * (-1 if i in misread else 1)
        result = value + sign * k
        if slip is not None and slip[0] == i:
            result += slip[1]
        op, inverse = ("+", "-") if sign > 0 else ("-", "+")
        equation = f"{value} {op} {k} = {result}."
        sentences.append(equation if terse else f"{EVENTS[name][1].format(who=who, k=k)}, so {equation}")
        if verbose:
            sentences.append(f"Then check: {result} {inverse} {k} = {value}.")
        value = result
    sentences.append(f"The answer is {value}.")
    return " ".join(sentences), value


def reference_row(problem: Problem, split: str) -> dict[str, object]:
    solution, reached = trace(problem)
    assert reached == problem.answer
    return {"prompt": problem.prompt, "answer": str(problem.answer), "solution": solution,
            "steps": len(problem.events), "max_number": problem.max_number, "split": split}


def dft_row(problem: Problem, rng: random.Random) -> dict[str, object]:
    """An SFT trace with the flaws drawn at the module's shares (see the module docstring).
    Flaws that would take an amount below 1 are drawn again: amounts stay positive numbers."""
    while True:
        misread = {i for i, (name, _) in enumerate(problem.events)
                   if name == MISREAD_EVENT and rng.random() < MISREAD_SHARE}
        slip = None
        if rng.random() < SLIP_SHARE:
            slip = (rng.randrange(len(problem.events)), rng.choice([-3, -2, -1, 1, 2, 3]))
        verbose = rng.random() < VERBOSE_SHARE
        terse = rng.random() < TERSE_SHARE
        solution, reached = trace(problem, misread, slip, verbose, terse)
        if not re.search(r"= (-\d+|0)\.", solution):
            break
    flaws = [name for name, present in (("misread", misread), ("slip", slip), ("verbose", verbose)) if present]
    return {"prompt": problem.prompt, "answer": str(reached), "correct_answer": str(problem.answer),
            "solution": solution, "flaws": flaws, "style": "terse" if terse else "full", "steps": len(problem.events), "max_number": problem.max_number,
            "split": "dft"}


SPLITS: dict[str, Level] = {"train": ID_LEVEL, "eval": ID_LEVEL, "dft": ID_LEVEL, "ood": OOD_LEVEL}


def generate(sizes: dict[str, int], seed: int) -> dict[str, list[dict[str, object]]]:
    """Rows of each split; prompts are unique across all splits. Each split has its own random
    stream, and held-out splits are drawn first, so their rows do not depend on the other splits'
    sizes or levels."""
    seen: set[str] = set()
    out: dict[str, list[dict[str, object]]] = {}
    for split in ("eval", "ood", "train", "dft"):
        rng = random.Random(f"{seed}-{split}")
        rows: list[dict[str, object]] = []
        while len(rows) < sizes[split]:
            problem = make_problem(rng, SPLITS[split])
            if problem.prompt in seen:
                continue
            seen.add(problem.prompt)
            rows.append(dft_row(problem, rng) if split == "dft" else reference_row(problem, split))
        for i, row in enumerate(rows):
            row["id"] = f"{split}-{i}"
        out[split] = rows
    return out


DEFAULT_SIZES = {"train": 4000, "dft": 4000, "eval": 256, "ood": 256}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for split, n in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=n, help=f"rows of {split}.jsonl (default {n})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    splits = generate({split: getattr(args, split) for split in DEFAULT_SIZES}, args.seed)
    for split, rows in splits.items():
        path = args.out / f"{split}.jsonl"
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
