"""Generate the agentic task (issue 24): multi-step word problems whose numbers are too large for
the tiny model to compute in its head, solved with the tools of the task's environment
(data/agent/ledger.py: `Ledger`, TRL's `environment_factory` contract).

    python data/agent/generate.py            # writes the four files next to this script

A problem is a short story over 4-digit amounts whose answer takes 2 or 3 arithmetic steps:

    prompt:  A depot holds 4821 crates of 37 bottles each. 9052 bottles are shipped. How many bottles are left?
    episode: calculate(a="n1", op="*", b="n2") -> "r1 = 178377"
             calculate(a="r1", op="-", b="n3") -> "r2 = 169325"
             answer(value="r2")                -> "submitted 169325"
             "Done."
    answer:  169325        (the Ledger's get_reward(): 1.0 when the submitted value is it)

The Ledger names the problem's numbers n1, n2, ... in the order the text states them and each
result r1, r2, ...; the model calls the tools on names, so it never has to copy a number (a tiny
model trained from scratch for minutes does not learn to copy multi-token numbers: bench/RESULTS.md,
"Agentic task"). It still has to read which numbers a story combines, how, and in what order.

- `train.jsonl`  RL prompts, in distribution (ID): 2 steps (3 stories) or 3 steps (2 stories),
                 operations * + -.
- `eval.jsonl`   held-out ID prompts, same distribution.
- `ood.jsonl`    held-out out-of-distribution prompts: stories the ID splits never show, with another
                 operation mix: a product of three numbers, an exact division, or 4 steps.
- `dft.jsonl`    tool-use traces for the DFT warm start, in TRL's conversational form (`messages`),
                 imperfect on purpose (below).

Every row: id, prompt, answer (the true result), quantities (the problem's numbers in order: what
`Ledger.reset` names n1, n2, ...), steps, story, split. `dft.jsonl` rows carry the trace to imitate:
`messages` (user, then assistant turns with `tool_calls` and `tool` results, then "Done."), `style`
(below), `answer` the answer the trace submits (wrong when the trace is) and `correct_answer` the
true one.

A trace's style is drawn with the shares of `--mix` (default DEFAULT_MIX):

- `guess`    skips `calculate` and submits a number at once: the true answer's first digits and
             random others (the right one in GUESS_RIGHT_SHARE of them). The most common style, so a
             policy that imitates the data at greedy decoding mostly guesses, and mostly wrongly.
- `tool`     one `calculate` call per step (>= 2 per problem), on the problem's numbers and earlier
             results by name, then `answer` with the last result's name.
- `bad_call` one step's call goes wrong, in one of three ways drawn evenly (the steps before it are
             called correctly):
             `bad_json`   the call's JSON is cut short (its text, as the template writes a call, minus
                          the closing brace): the episode loop answers with the parser's error
                          (`bad_json_result`) and the trace then guesses;
             `wrong_tool` the call names a tool that does not exist (WRONG_TOOL_NAME): the loop
                          answers "unknown tool" (UNKNOWN_TOOL_RESULT) and the trace then guesses;
             `wrong_operand` one operand names another number or result: the Ledger computes what
                          it was given, and the rest of the trace follows from that wrong value to a
                          wrong answer.

With the default seed, sizes and mix, dft.jsonl holds 1500 traces (890 of 2 steps, 610 of 3):
1049 guess (108 of them right), 284 tool, 167 bad_call (53 bad_json, 58 wrong_tool, 56
wrong_operand; 15 of their guesses right); 407 of the 1500 reach the right answer. The mix is
guess-heavy on purpose: the greedy DFT start then guesses (0% accuracy), while sampled episodes use
the tools often enough to be right now and then, which is what RL has to work from.

Tool results are what the episode loop would feed back: the Ledger's results for these calls, and
the loop's error texts for the bad calls; tests/curriculum/test_dft_agent.py checks both against
the real code (one trace per style through a real episode process). All prompts are distinct across
the four files. Deterministic from `--seed`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CALC, ANSWER = "calculate", "answer"
"""The task's tools: the methods of data/agent/ledger.py's `Ledger` environment."""
WRONG_TOOL_NAME = "calc"
UNKNOWN_TOOL_RESULT = str({"error": f"unknown tool {WRONG_TOOL_NAME!r}; tools: {ANSWER}, {CALC}"})
"""What an episode's tool process answers a call of WRONG_TOOL_NAME (ling_rl/environments/process.py:
TRL's `str({"error": message})`)."""

DEFAULT_MIX = {"guess": 0.7, "tool": 0.2, "bad_call": 0.1}
BAD_CALL_KINDS = ("bad_json", "wrong_tool", "wrong_operand")
GUESS_RIGHT_SHARE = 0.1


@dataclass(frozen=True)
class Ref:
    """An operand that is the result of an earlier step."""

    step: int


Operand = int | Ref


@dataclass(frozen=True)
class Step:
    left: Operand
    op: str
    """One of OPS."""
    right: Operand


OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b,  # only exact divisions are generated
}


@dataclass(frozen=True)
class Problem:
    story: str
    prompt: str
    steps: tuple[Step, ...]

    def values(self) -> list[int]:
        """The result of each step."""
        out: list[int] = []
        for step in self.steps:
            out.append(OPS[step.op](value(step.left, out), value(step.right, out)))
        return out

    @property
    def quantities(self) -> list[int]:
        """The problem's numbers in the order its text states them (the Ledger's n1, n2, ...)."""
        return [int(n) for n in re.findall(r"\d+", self.prompt)]

    @property
    def answer(self) -> int:
        return self.values()[-1]


def value(operand: Operand, results: list[int]) -> int:
    return results[operand.step] if isinstance(operand, Ref) else operand


# One function per story: the prompt and its steps, drawn from `rng`. Amounts have 3-4 digits,
# per-unit counts 2, so products reach about a million.

def depot(rng: random.Random) -> Problem:
    a, b = rng.randint(120, 9999), rng.randint(12, 99)
    c = rng.randint(100, min(9999, a * b - 1))
    return Problem("depot", f"A depot holds {a} crates of {b} bottles each. {c} bottles are shipped. "
                   "How many bottles are left?", (Step(a, "*", b), Step(Ref(0), "-", c)))


def orchard(rng: random.Random) -> Problem:
    a, b, c = rng.randint(120, 9999), rng.randint(12, 99), rng.randint(100, 9999)
    return Problem("orchard", f"An orchard has {a} rows of {b} trees. {c} more trees are planted. "
                   "How many trees are there now?", (Step(a, "*", b), Step(Ref(0), "+", c)))


def factory(rng: random.Random) -> Problem:
    a, b = rng.randint(120, 9999), rng.randint(12, 99)
    c = rng.randint(100, min(9999, a * b - 1))
    return Problem("factory", f"A factory makes {a} toys a day for {b} days and sells {c} of them. "
                   "How many toys are left?", (Step(a, "*", b), Step(Ref(0), "-", c)))


def shop(rng: random.Random) -> Problem:
    a, b, c, d = rng.randint(120, 9999), rng.randint(12, 99), rng.randint(120, 9999), rng.randint(12, 99)
    return Problem("shop", f"A shop gets {a} boxes of {b} pens and {c} boxes of {d} pens. "
                   "How many pens does it get?", (Step(a, "*", b), Step(c, "*", d), Step(Ref(0), "+", Ref(1))))


def library(rng: random.Random) -> Problem:
    a, b, c = rng.randint(120, 9999), rng.randint(12, 99), rng.randint(100, 9999)
    d = rng.randint(100, min(9999, a * b + c - 1))
    return Problem("library", f"A library has {a} shelves of {b} books. It buys {c} books and gives away {d}. "
                   "How many books does it have now?", (Step(a, "*", b), Step(Ref(0), "+", c), Step(Ref(1), "-", d)))


def workers(rng: random.Random) -> Problem:
    a, b, c = rng.randint(12, 99), rng.randint(12, 99), rng.randint(12, 99)
    d = rng.randint(100, 9999)
    return Problem("workers", f"Each of {a} workers packs {b} boxes a day for {c} days. {d} boxes are damaged. "
                   "How many good boxes are there?", (Step(a, "*", b), Step(Ref(0), "*", c), Step(Ref(1), "-", d)))


def stores(rng: random.Random) -> Problem:
    k = rng.randint(3, 12)
    a, b = rng.randint(120, 9999), rng.randint(12, 99)
    # The shipped amount leaves a multiple of k, so the share is a whole number.
    c = rng.randint(100, min(9999, a * b - k))
    c += (a * b - c) % k
    return Problem("stores", f"A depot holds {a} crates of {b} bottles each. {c} bottles are shipped and the rest "
                   f"is shared equally among {k} stores. How many bottles does each store get?",
                   (Step(a, "*", b), Step(Ref(0), "-", c), Step(Ref(1), "/", k)))


def market(rng: random.Random) -> Problem:
    a, b, c, d = rng.randint(120, 9999), rng.randint(12, 99), rng.randint(120, 9999), rng.randint(12, 99)
    e = rng.randint(100, min(9999, a * b + c * d - 1))
    return Problem("market", f"A market gets {a} boxes of {b} eggs and {c} boxes of {d} eggs and sells {e} eggs. "
                   "How many eggs are left?",
                   (Step(a, "*", b), Step(c, "*", d), Step(Ref(0), "+", Ref(1)), Step(Ref(2), "-", e)))


ID_STORIES = (depot, orchard, factory, shop, library)
"""2 steps (depot, orchard, factory) or 3 (shop, library): 60% / 40%."""
OOD_STORIES = (workers, stores, market)
"""A product of three numbers, an exact division, or 4 steps."""
SPLITS: dict[str, tuple[Callable[[random.Random], Problem], ...]] = {
    "train": ID_STORIES, "eval": ID_STORIES, "dft": ID_STORIES, "ood": OOD_STORIES}


Call = tuple[str, str, str]
"""A `calculate` call's arguments: a, op, b (names: n1, n2, ... the problem's quantities; r1, r2, ...
earlier results)."""


def name_of(operand: Operand, quantities: list[int]) -> str:
    """An operand's name in the Ledger: `n<k>` for the problem's k-th quantity, `r<k>` for the k-th result."""
    return f"r{operand.step + 1}" if isinstance(operand, Ref) else f"n{quantities.index(operand) + 1}"


def arguments(step: Step, quantities: list[int]) -> Call:
    """The call of `step`, by name."""
    return name_of(step.left, quantities), step.op, name_of(step.right, quantities)


def call_message(name: str, args: dict[str, str]) -> dict[str, object]:
    """An assistant turn that calls tool `name` with `args` (TRL's conversational form)."""
    spec = {"type": "function", "function": {"name": name, "arguments": args}}
    return {"role": "assistant", "content": "", "tool_calls": [spec]}


def calc_message(call: Call, name: str = CALC) -> dict[str, object]:
    a, op, b = call
    return call_message(name, {"a": a, "op": op, "b": b})


def bad_json_message(call: Call) -> dict[str, object]:
    """An assistant turn whose call is written out as the template writes one (hermes,
    `<tool_call>{json}</tool_call>`) but with the JSON cut short: it has no parsed `tool_calls`."""
    a, op, b = call
    text = json.dumps({"name": CALC, "arguments": {"a": a, "op": op, "b": b}})
    return {"role": "assistant", "content": f"<tool_call>{text[:-1]}</tool_call>"}


def bad_json_result(message: dict[str, object]) -> str:
    """What the episode loop answers a call whose JSON does not parse: the hermes parser's error
    (ling_rl/environments/parsers.py) as TRL's `str({"error": message})`."""
    body = str(message["content"]).removeprefix("<tool_call>").removesuffix("</tool_call>")
    try:
        json.loads(body)
    except json.JSONDecodeError as e:
        return str({"error": f"malformed tool call: the block is not valid JSON ({e.msg} at character {e.pos})"})
    raise AssertionError(f"not malformed: {body}")


def tool_message(content: str, name: str = CALC) -> dict[str, object]:
    return {"role": "tool", "name": name, "content": content}


def submit(value: str, shown: int) -> list[dict[str, object]]:
    """The `answer` call, its result, and the closing turn."""
    return [call_message(ANSWER, {"value": value}), tool_message(f"submitted {shown}", ANSWER), DONE]


DONE = {"role": "assistant", "content": "Done."}


def guess(answer: int, rng: random.Random) -> int:
    """A plausible number for someone who does not compute: the answer's first 1-2 digits, the rest
    random (the same number of digits), right in GUESS_RIGHT_SHARE of the guesses."""
    if rng.random() < GUESS_RIGHT_SHARE:
        return answer
    digits = str(answer)
    keep = min(len(digits) - 1, rng.randint(1, 2))
    while True:
        made = int(digits[:keep] + "".join(rng.choice("0123456789") for _ in range(len(digits) - keep)))
        if made != answer:
            return made


def misname(name: str, known: list[str], rng: random.Random) -> str:
    """Another known name than `name` (the model picked the wrong quantity or result)."""
    return rng.choice([k for k in known if k != name])


def trace(problem: Problem, style: str, rng: random.Random) -> tuple[list[dict[str, object]], int]:
    """The assistant and tool messages of one trace in `style` (a DEFAULT_MIX key or a
    BAD_CALL_KINDS entry), and the answer it submits."""
    quantities, results = problem.quantities, problem.values()
    if style == "guess":
        reached = guess(problem.answer, rng)
        return submit(str(reached), reached), reached
    # `tool` calls every step; a bad call replaces the call of step `bad`.
    bad = len(results) if style == "tool" else rng.randrange(len(results))
    messages: list[dict[str, object]] = []
    for i in range(bad):
        messages += [calc_message(arguments(problem.steps[i], quantities)), tool_message(f"r{i + 1} = {results[i]}")]
    if style == "tool":
        return [*messages, *submit(f"r{len(results)}", results[-1])], results[-1]
    bad_call = arguments(problem.steps[bad], quantities)
    if style == "bad_json":
        reached = guess(problem.answer, rng)
        cut = bad_json_message(bad_call)
        # A call that does not parse has no name: the loop's tool message names none.
        return [*messages, cut, tool_message(bad_json_result(cut), ""), *submit(str(reached), reached)], reached
    if style == "wrong_tool":
        reached = guess(problem.answer, rng)
        return [*messages, calc_message(bad_call, WRONG_TOOL_NAME), tool_message(UNKNOWN_TOOL_RESULT, WRONG_TOOL_NAME),
                *submit(str(reached), reached)], reached
    assert style == "wrong_operand", style
    # One operand of step `bad` names the wrong quantity or result; the rest follows from it.
    known = [f"n{k + 1}" for k in range(len(quantities))] + [f"r{k + 1}" for k in range(bad)]
    a, op, b = bad_call
    side = rng.choice(["a", "b"])
    call = (misname(a, known, rng), op, b) if side == "a" else (a, op, misname(b, known, rng))
    values = {f"n{k + 1}": q for k, q in enumerate(quantities)}
    values.update({f"r{k + 1}": results[k] for k in range(bad)})
    for i in range(bad, len(results)):
        if i > bad:
            call = arguments(problem.steps[i], quantities)
        left, op, right = values[call[0]], call[1], values[call[2]]
        values[f"r{i + 1}"] = OPS[op](left, right)
        messages += [calc_message(call), tool_message(f"r{i + 1} = {values[f'r{i + 1}']}")]
    reached = values[f"r{len(results)}"]
    return [*messages, *submit(f"r{len(results)}", reached)], reached


def draw_style(rng: random.Random, mix: dict[str, float]) -> str:
    style = rng.choices(list(mix), weights=list(mix.values()))[0]
    return rng.choice(BAD_CALL_KINDS) if style == "bad_call" else style


def reference_row(problem: Problem, split: str) -> dict[str, object]:
    return {"prompt": problem.prompt, "answer": str(problem.answer), "quantities": problem.quantities,
            "steps": len(problem.steps),
            "story": problem.story, "split": split}


def dft_row(problem: Problem, rng: random.Random, mix: dict[str, float]) -> dict[str, object]:
    style = draw_style(rng, mix)
    messages, reached = trace(problem, style, rng)
    return {"prompt": problem.prompt, "answer": str(reached), "correct_answer": str(problem.answer),
            "quantities": problem.quantities,
            "messages": [{"role": "user", "content": problem.prompt}, *messages], "style": style,
            "steps": len(problem.steps), "story": problem.story, "split": "dft"}


def generate(sizes: dict[str, int], seed: int, mix: dict[str, float] = DEFAULT_MIX) -> dict[str, list[dict[str, object]]]:
    """Rows of each split; prompts are unique across all splits. Each split has its own random
    stream, and held-out splits are drawn first, so their rows do not depend on the other splits'
    sizes or on the mix."""
    seen: set[str] = set()
    out: dict[str, list[dict[str, object]]] = {}
    for split in ("eval", "ood", "train", "dft"):
        rng = random.Random(f"{seed}-{split}")
        rows: list[dict[str, object]] = []
        while len(rows) < sizes[split]:
            problem = rng.choice(SPLITS[split])(rng)
            if problem.prompt in seen:
                continue
            seen.add(problem.prompt)
            rows.append(dft_row(problem, rng, mix) if split == "dft" else reference_row(problem, split))
        for i, row in enumerate(rows):
            row["id"] = f"{split}-{i}"
        out[split] = rows
    return out


def parse_mix(text: str) -> dict[str, float]:
    """`guess=0.7,tool=0.2,bad_call=0.1` -> shares (normalized to sum 1)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, share = part.partition("=")
        if not sep or name.strip() not in DEFAULT_MIX:
            raise argparse.ArgumentTypeError(f"--mix: {part!r} is not NAME=SHARE with NAME one of {', '.join(DEFAULT_MIX)}")
        mix[name.strip()] = float(share)
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("--mix: shares must be >= 0 and not all 0")
    total = sum(mix.values())
    return {name: share / total for name, share in mix.items()}


DEFAULT_SIZES = {"train": 2000, "dft": 1500, "eval": 200, "ood": 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for split, n in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=n, help=f"rows of {split}.jsonl (default {n})")
    parser.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX,
                        help="shares of the DFT trace styles (default guess=0.7,tool=0.2,bad_call=0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    splits = generate({split: getattr(args, split) for split in DEFAULT_SIZES}, args.seed, args.mix)
    for split, rows in splits.items():
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{split}.jsonl"
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"wrote {len(rows)} rows to {path}")
    dft = splits["dft"]
    styles = {style: sum(r["style"] == style for r in dft) for style in ("guess", "tool", *BAD_CALL_KINDS)}
    right = sum(r["answer"] == r["correct_answer"] for r in dft)
    print(f"dft styles: {styles}; reaching the right answer: {right} of {len(dft)}")


if __name__ == "__main__":
    main()
