"""Throughput (samples/s) of the front-end and judge reward plugins, in one process (no Ray).

    python bench/rewards_frontend.py                       # syntax, function, aesthetics, sfa
    python bench/rewards_frontend.py --judge-url http://127.0.0.1:8001/v1 --judge-model tiny
                                                           # also gar and rubric against that server

Responses: one valid single-file page per task of data/frontend/tasks.jsonl (varied by index, so
no render is a cache hit), scored with the task's checks. Judges: the open prompts with 4
responses each. Each plugin is timed over `--repeats` passes with fresh plugin instances; the
browser is launched once before timing (as in a long-lived reward worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

# The script's folder comes first on sys.path; the project's packages come from the repository root.
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

from rewards.aesthetics import Aesthetics
from rewards.browser import get_browser
from rewards.function import Function
from rewards.gar import GroupArena
from rewards.rubric import Rubric
from rewards.sfa import SyntaxFunctionAesthetics
from rewards.syntax import syntax  # noqa: E402 - after the sys.path fix

PAGE = """```html
<!DOCTYPE html><html><head><title>T{i}</title><style>
body {{ font-family: sans-serif; padding: 32px; color: #222; background: #fafafa; }}
.plan, .tab, .swatch, .q {{ display: inline-block; margin: 8px; padding: 8px; border: 1px solid #ccc; }}
</style></head><body><h1>Counter Pricing Ling {i}</h1><h2>Pricing</h2>
<p id="count">0</p><button id="inc">Increment</button> <input id="new"><button id="add">Add</button>
<ul id="list"></ul><button id="theme">Theme</button><div class="plan">A</div><div class="plan">B</div>
<div class="plan">C</div><p id="chosen"></p><input id="c" value="100"><button id="convert">Convert</button>
<p id="f"></p><a class="cta" href="#">Start</a>
<script>
let n = 0; const $ = id => document.getElementById(id);
$("inc").onclick = () => {{ n += 1; $("count").textContent = String(n); }};
$("add").onclick = () => {{ const li = document.createElement("li"); li.textContent = $("new").value || "item"; $("list").appendChild(li); }};
$("theme").onclick = () => document.body.classList.toggle("dark");
$("convert").onclick = () => {{ $("f").textContent = String(Number($("c").value) * 9 / 5 + 32); }};
</script></body></html>
```"""


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--judge-url", default=None)
    parser.add_argument("--judge-model", default=None)
    args = parser.parse_args()

    tasks = [json.loads(line) for line in (ROOT / "data/frontend/tasks.jsonl").read_text().splitlines()]
    get_browser()  # launch outside the timings
    results: dict[str, float] = {}
    for name, make in [("syntax", lambda: syntax), ("function", Function), ("aesthetics (layout)", Aesthetics),
                       ("sfa (layout)", SyntaxFunctionAesthetics)]:
        n, elapsed = 0, 0.0
        for r in range(args.repeats):
            completions = [PAGE.format(i=f"{name}-{r}-{i}") for i in range(len(tasks))]
            plugin = make()
            start = time.perf_counter()
            plugin(completions=completions, checks=[t["checks"] for t in tasks])
            elapsed += time.perf_counter() - start
            n += len(completions)
        results[name] = rate(n, elapsed)

    if args.judge_url:
        judge = {"base_url": args.judge_url, "model": args.judge_model, "max_tokens": 32, "max_concurrency": 8}
        prompts = [json.loads(line) for line in (ROOT / "data/open/prompts.jsonl").read_text().splitlines()]
        gar, rubric = GroupArena(judge=judge), Rubric(judge=judge)

        async def run_judges() -> None:
            for name, plugin in [("gar (group of 4)", gar), ("rubric", rubric)]:
                start = time.perf_counter()
                calls = [plugin(prompts=[p["prompt"]] * 4, completions=[f"answer {k} to {p['id']}" for k in range(4)],
                                **({"rubric": [p["rubric"]] * 4} if plugin is rubric else {})) for p in prompts]
                await asyncio.gather(*calls)
                results[name] = rate(4 * len(prompts), time.perf_counter() - start)

        asyncio.run(run_judges())

    print("| plugin | samples/s |\n|---|---|")
    for name, value in results.items():
        print(f"| `{name}` | {value:.1f} |")


if __name__ == "__main__":
    main()
