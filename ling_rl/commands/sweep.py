"""`ling-rl sweep RECIPE --seeds 0,1,2 --grid KEY=A,B,C --arm "NAME: KEY=V KEY=V"`: a multi-seed A/B.

The grid points are every combination of one value per `--grid` key and, when `--arm` is given,
one arm: an arm is a named set of overrides (`--arm "off: rewards.2.weight=0" --arm "budget:
rewards.2.args.design=budget"`), for comparisons that are not one key's values. Every combination
of a grid point and a seed is one `ling-rl train` run in its own folder, `OUT/<point>/seed-<s>`;
then one comparison report, `OUT/sweep.md`, `OUT/sweep_accuracy.png` (held-out accuracy, seed
bands) and `OUT/sweep_frontier.png` (final accuracy against final greedy length, per point and
seed) gives per grid point the mean +- std over seeds of:

- final and best held-out greedy accuracy (`eval/accuracy_greedy` and each `eval.extra_data` set's);
- final greedy response length in tokens and in linguistic units (`eval/response_len_greedy`,
  `eval/units_greedy`);
- steps to reach `--target` greedy accuracy (the first eval at or above it; runs that never reach
  it are counted apart);
- stability: collapse (the held-out greedy accuracy falls below half its best at a later
  evaluation: 1 or 0 per run, so its mean is the collapse rate), the largest drop of the rolling
  mean reward (window `ROLLING` steps: its largest fall below an earlier peak), grad-norm spikes
  (steps above `SPIKE` x the run's median `train/grad_norm`), mean clip fraction, mean entropy.

With `--baseline NAME` (a grid point), a second table pairs every other point's run with the
baseline's run of the same seed: how much shorter its final greedy answers are (%) and how its
final held-out accuracies differ (points), mean +- std over seeds and each seed's value, with
`OUT/sweep_paired.png` (that change in accuracy against that shortening, a dot per seed). The seeds
differ far more than the arms do when each has its own DFT start; the paired difference removes
that shared part, and is what a goal such as "20% shorter within 2 points" is judged on.

A seed sets `run.seed`, `rollout.seed` and `data.seed` (the RL's randomness: sampling and prompt
order). With `dft.enabled`, the DFT runs once per seed (with `dft.seed`, `model.seed`: a tiny
model's initial weights, and the seeds above), in
`OUT/dft/seed-<s>` (the recipe with one RL step at learning rate 1e-12, whose exported `hf_final`
is the DFT weights: the trick of bench/ab_losses.py), and every run of that seed starts from that
folder with `dft.enabled=false`: the grid points of one seed share their start, and the spread over
seeds includes the warm start's. A run folder that already holds its last step (and a DFT folder
with its export) is not run again, so an interrupted sweep resumes.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ling_rl.tracking.report import RunData, eval_accuracy_keys, load_run

ROLLING = 5
"""Steps in the rolling mean reward whose largest drop measures (in)stability."""
SPIKE = 3.0
"""A grad-norm spike: a step's `train/grad_norm` above this many times the run's median."""
SEED_KEYS = ("run.seed", "rollout.seed", "data.seed")
DFT_SEED_KEYS = ("dft.seed", "model.seed")
"""Seeds of a seed's shared DFT run beside `SEED_KEYS`: its batches, and a tiny model's initial weights."""
COLLAPSE = 0.5
"""A run collapsed when a held-out greedy accuracy after its best is below this fraction of the best."""


@dataclass(frozen=True)
class Setting:
    """One coordinate of a grid point: a label for folder names and tables, and its overrides
    (`type=lpo` for `--grid algorithm.loss.type=lpo,...`; an arm's name for `--arm`)."""

    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Combo:
    """One run of the sweep: a grid point (its settings) and a seed."""

    point: tuple[Setting, ...]
    seed: int

    @property
    def point_name(self) -> str:
        return ",".join(setting.label for setting in self.point) or "recipe"

    def overrides(self) -> list[str]:
        return [o for setting in self.point for o in setting.overrides] + seed_overrides(self.seed)

    def run_dir(self, out: Path) -> Path:
        return out / self.point_name / f"seed-{self.seed}"


def seed_overrides(seed: int) -> list[str]:
    """The RL's seeds (`SEED_KEYS`) set to `seed`."""
    return [f"{k}={seed}" for k in SEED_KEYS]


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]; a clear error for anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: give integers separated by commas, e.g. 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: give at least one seed, each once; got {text!r}")
    return seeds


def parse_grid(items: list[str], arms: list[str] | None = None) -> list[tuple[Setting, ...]]:
    """`["algorithm.loss.type=lpo,gspo", "learner.lr=1e-4,2e-4"]` -> every combination of values;
    with `arms` (`["off: rewards.2.weight=0", ...]`), every combination of an arm and those."""
    axes: list[list[Setting]] = [parse_arms(arms)] if arms else []
    keys: set[str] = set()
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not options:
            raise ValueError(f"--grid: expected KEY=VALUE1,VALUE2,...; got {item!r}")
        if key in keys:
            raise ValueError(f"--grid: key {key!r} is given twice")
        keys.add(key)
        axes.append([Setting(f"{key.rsplit('.', 1)[-1]}={v}", (f"{key}={v}",)) for v in options])
    return [tuple(point) for point in itertools.product(*axes)]


def parse_arms(items: list[str]) -> list[Setting]:
    """`["off: rewards.2.weight=0", "budget: rewards.2.args.design=budget learner.lr=2e-4"]` -> arms
    (a name, then overrides separated by spaces; an arm may have none: the recipe as it is)."""
    arms: list[Setting] = []
    for item in items:
        name, sep, rest = item.partition(":")
        name, overrides = name.strip(), tuple(rest.split())
        if not sep or not name or any(c in name for c in "/,= ") or any("=" not in o for o in overrides):
            raise ValueError(f"--arm: expected \"NAME: KEY=VALUE KEY=VALUE ...\" (a name without / , = or spaces); "
                             f"got {item!r}")
        if any(arm.label == name for arm in arms):
            raise ValueError(f"--arm: name {name!r} is given twice")
        arms.append(Setting(name, overrides))
    return arms


Runs = dict[str, dict[int, RunData]]
"""The runs of a sweep: per grid point name, per seed, that run's metrics."""


def plan(seeds: list[int], grid: list[tuple[Setting, ...]]) -> list[Combo]:
    """Seeds interleaved across grid points (seed 0 of every point first), so a sweep cut short
    still compares every point."""
    return [Combo(point, seed) for seed in seeds for point in grid]


def is_done(run_dir: Path, steps: int) -> bool:
    """Whether `run_dir` holds the metrics of RL step `steps - 1`."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return False
    return any(json.loads(line).get("step") == steps - 1 for line in metrics.read_text().splitlines() if line.strip())


DFT_ONLY = ["run.steps=1", "learner.lr=1e-12", "eval.every=0", "checkpoint.every=0", "checkpoint.export_hf=true"]
"""Overrides of the shared DFT run: one RL step that leaves the DFT weights (lr 1e-12), exported."""


def from_dft(dft_dir: Path) -> list[str]:
    """Overrides that start a run from the shared DFT's export instead of running DFT again."""
    return ["model.tiny=null", f"model.path={dft_dir / 'hf_final'}", "dft.enabled=false"]


def train(recipe: Path, overrides: list[str], run_dir: Path) -> int:
    """`ling-rl train` in a subprocess; returns its exit code."""
    cmd = [sys.executable, "-m", "ling_rl.commands.cli", "train", str(recipe), *overrides, "--run-dir", str(run_dir)]
    return subprocess.run(cmd, check=False).returncode


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds.


def steps_to(run: RunData, key: str, target: float) -> int | None:
    """The first eval step whose `key` is >= target; None if never."""
    for step, value in zip(*run.series(key)):
        if value >= target:
            return int(step)
    return None


def largest_rolling_drop(values: np.ndarray, window: int = ROLLING) -> float:
    """Largest fall of the rolling mean below an earlier peak of it (0 for a curve that never falls).

    >>> largest_rolling_drop(np.array([0.0, 1.0, 2.0, 1.0, 0.0, 3.0]), window=1)
    2.0
    """
    if len(values) < window:
        return 0.0
    rolling = np.convolve(values, np.ones(window) / window, mode="valid")
    return float(np.max(np.maximum.accumulate(rolling) - rolling))


def collapsed(accuracy: np.ndarray, fraction: float = COLLAPSE) -> bool:
    """Whether an evaluation after the best one is below `fraction` x the best.

    >>> collapsed(np.array([0.2, 0.6, 0.5, 0.25])), collapsed(np.array([0.2, 0.6, 0.4]))
    (True, False)
    """
    if not len(accuracy):
        return False
    best = int(np.argmax(accuracy))
    return bool(np.any(accuracy[best + 1:] < fraction * accuracy[best]))


def grad_norm_spikes(values: np.ndarray, factor: float = SPIKE) -> int:
    """Steps whose grad norm is above `factor` x the median."""
    if not len(values):
        return 0
    return int(np.sum(values > factor * float(np.median(values))))


def run_measures(run: RunData, target: float) -> dict[str, float | None]:
    """One run's numbers (None: the run lacks the metric, or never reached the target)."""
    out: dict[str, float | None] = {}
    for key in eval_accuracy_keys(run):
        if not key.endswith("_greedy"):
            continue
        _, values = run.series(key)
        out[f"final {key}"] = float(values[-1])
        out[f"best {key}"] = float(values.max())
    # Where the run ends on the accuracy-vs-length frontier (Evo-CoT's claim is about both).
    for key in ("eval/response_len_greedy", "eval/units_greedy"):
        _, values = run.series(key)
        out[f"final {key}"] = float(values[-1]) if len(values) else None
    _, accuracy = run.series("eval/accuracy_greedy")
    out[f"collapsed (ID greedy < {COLLAPSE:g} x its best, later)"] = (float(collapsed(accuracy))
                                                                     if len(accuracy) else None)
    reached = steps_to(run, "eval/accuracy_greedy", target)
    out[f"steps to eval/accuracy_greedy >= {target:g}"] = None if reached is None else float(reached)
    _, reward = run.series("reward/mean")
    out[f"largest drop of the {ROLLING}-step rolling reward"] = largest_rolling_drop(reward) if len(reward) else None
    _, grad = run.series("train/grad_norm")
    out[f"grad-norm spikes (> {SPIKE:g}x median)"] = float(grad_norm_spikes(grad)) if len(grad) else None
    for key, name in (("policy/clip_frac_token", "mean clip fraction (token)"), ("train/entropy", "mean entropy")):
        _, values = run.series(key)
        out[name] = float(values.mean()) if len(values) else None
    return out


def _std(values: np.ndarray) -> float:
    """Sample std (the tables' spread), 0 for one value."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def mean_std(values: list[float]) -> str:
    """`mean +- std` (sample std; 0 for one value), 4 significant digits."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4g} +- {std:.2g}"


def aggregate(runs: Runs, target: float) -> list[list[str]]:
    """Rows of the comparison table: header, then one row per measure with a cell per grid point;
    a measure some seeds lack says how many seeds it has."""
    measures = {point: [run_measures(r, target) for r in point_runs.values()] for point, point_runs in runs.items()}
    names = list(dict.fromkeys(name for rows in measures.values() for row in rows for name in row))
    table = [["measure", *(f"{point} ({len(runs[point])} seeds)" for point in runs)]]
    for name in names:
        cells = [name]
        for point, rows in measures.items():
            values = [row[name] for row in rows if row.get(name) is not None]
            cell = mean_std([v for v in values if v is not None and math.isfinite(v)])
            if len(values) < len(rows):
                cell += f" ({len(values)} of {len(rows)})"
            cells.append(cell)
        table.append(cells)
    return table


Changes = dict[str, dict[str, dict[int, float]]]
"""Per grid point, per measure, per seed: a change against the baseline's run of that seed."""


def paired_changes(runs: Runs, baseline: str, target: float) -> Changes:
    """Per grid point other than `baseline`, per measure, per seed both ran: the change against the
    baseline's run of that seed. Measures: the final greedy length, as % shorter than the baseline's,
    and each final held-out greedy accuracy minus the baseline's, in points."""
    base = {seed: run_measures(run, target) for seed, run in runs[baseline].items()}
    length = "final eval/response_len_greedy"
    changes: Changes = {}
    for point, point_runs in runs.items():
        if point == baseline:
            continue
        per_measure: dict[str, dict[int, float]] = {}
        for seed, run in point_runs.items():
            if seed not in base:
                continue
            own, ref = run_measures(run, target), base[seed]
            if own.get(length) is not None and ref.get(length):
                per_measure.setdefault(f"final greedy length: % shorter than {baseline}", {})[seed] = (
                    100.0 * (1.0 - own[length] / ref[length]))
            for key, value in own.items():
                if key.startswith("final ") and key.endswith("accuracy_greedy") and value is not None \
                        and ref.get(key) is not None:
                    per_measure.setdefault(f"{key}: points above {baseline}", {})[seed] = 100.0 * (value - ref[key])
        changes[point] = per_measure
    return changes


def paired_table(changes: Changes) -> list[list[str]]:
    """Rows of the paired table: header, then one row per measure of `paired_changes`, a cell per
    grid point: mean +- std over seeds, then each seed's value."""
    names = list(dict.fromkeys(name for measures in changes.values() for name in measures))
    table = [["measure", *(f"{point} ({len(next(iter(changes[point].values()), {}))} seeds)" for point in changes)]]
    for name in names:
        cells = [name]
        for measures in changes.values():
            by_seed = measures.get(name, {})
            each = ", ".join(f"seed {seed}: {value:.1f}" for seed, value in sorted(by_seed.items()))
            cells.append(mean_std(list(by_seed.values())) + (f" ({each})" if each else ""))
        table.append(cells)
    return table


def _draw_paired(runs: Runs, fig: Figure, changes: Changes, baseline: str) -> bool:
    """Change in final held-out ID greedy accuracy against % shorter final greedy answers, both
    against the baseline's run of the same seed (`changes`): a dot per seed, mean +- 1 std per
    grid point."""
    ax = fig.add_subplot()
    shorter, gain = f"final greedy length: % shorter than {baseline}", f"final eval/accuracy_greedy: points above {baseline}"
    drawn = False
    for point, measures in changes.items():
        seeds = sorted(set(measures.get(shorter, {})) & set(measures.get(gain, {})))
        if not seeds:
            continue
        xy = np.array([(measures[shorter][s], measures[gain][s]) for s in seeds])
        color = f"C{list(runs).index(point) % 10}"  # each point's colour in the other figures
        ax.scatter(xy[:, 0], xy[:, 1], color=color, alpha=0.4, s=18)
        ax.errorbar(xy[:, 0].mean(), xy[:, 1].mean(), xerr=_std(xy[:, 0]), yerr=_std(xy[:, 1]), color=color,
                    marker="o", capsize=3, label=f"{point} ({len(seeds)} seeds)")
        drawn = True
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.axvline(0.0, color="gray", linewidth=0.8)
    ax.set(xlabel=f"final greedy answers shorter than {baseline}'s, same seed (%)",
           ylabel=f"final ID greedy accuracy minus {baseline}'s (points)",
           title=f"Against {baseline}, paired by seed: dots are seeds, bars mean +- 1 std")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return drawn


def _draw_bands(runs: Runs, fig: Figure) -> None:
    ax = fig.add_subplot()
    for i, (point, point_runs) in enumerate(runs.items()):
        first = next(iter(point_runs.values()))
        for j, key in enumerate(k for k in eval_accuracy_keys(first) if k.endswith("_greedy")):
            series = [dict(zip(*(a.tolist() for a in r.series(key)))) for r in point_runs.values()]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            values = np.array([[s[step] for step in steps] for s in series])
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
            color = f"C{i % 10}"
            ax.plot(steps, mean, color=color, linestyle="-" if j == 0 else "--", marker="o", markersize=3,
                    label=f"{point}: {key}")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
    ax.set(xlabel="step", ylabel="greedy accuracy", title="Held-out accuracy: mean over seeds, band +- 1 std")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _draw_frontier(runs: Runs, fig: Figure) -> bool:
    """Final held-out greedy accuracy against final greedy length: one dot per run, the mean over
    seeds with +- 1 std bars per grid point. False when no run logged both."""
    ax = fig.add_subplot()
    drawn = False
    for i, (point, point_runs) in enumerate(runs.items()):
        ends = [(r.series("eval/response_len_greedy")[1], r.series("eval/accuracy_greedy")[1])
                for r in point_runs.values()]
        xy = np.array([(length[-1], accuracy[-1]) for length, accuracy in ends if len(length) and len(accuracy)])
        if not len(xy):
            continue
        color = f"C{i % 10}"
        ax.scatter(xy[:, 0], xy[:, 1], color=color, alpha=0.4, s=18)
        ax.errorbar(xy[:, 0].mean(), xy[:, 1].mean(), xerr=_std(xy[:, 0]), yerr=_std(xy[:, 1]), color=color,
                    marker="o", capsize=3, label=f"{point} ({len(xy)} seeds)")
        drawn = True
    ax.set(xlabel="final greedy response length (tokens)", ylabel="final held-out greedy accuracy",
           title="Accuracy vs length at the end: dots are seeds, bars mean +- 1 std")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return drawn


def _figure(draw, runs: Runs, path: Path) -> bool:
    """One figure drawn by `draw(runs, fig)` saved to `path` (unless `draw` returns False)."""
    fig = Figure(figsize=(10, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    if draw(runs, fig) is False:
        return False
    fig.savefig(path)
    return True


def _markdown(table: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0]),
            *("| " + " | ".join(row) + " |" for row in table[1:])]


def write_report(out: Path, runs: Runs, target: float, missing: list[str], baseline: str | None = None) -> Path:
    """sweep.md (the table), sweep_accuracy.png (seed bands) and sweep_frontier.png (accuracy vs
    length, when the runs logged greedy lengths) in `out`, with `baseline` also the paired table and
    sweep_paired.png; returns sweep.md."""
    table = aggregate(runs, target)
    _figure(_draw_bands, runs, out / "sweep_accuracy.png")
    frontier = _figure(_draw_frontier, runs, out / "sweep_frontier.png")
    lines = ["# Sweep", "", "Mean +- sample std over seeds; each seed a separate run from the same DFT start.", "",
             *_markdown(table)]
    if missing:
        lines += ["", "Runs without metrics (failed or not run): " + ", ".join(missing)]
    lines += ["", "![accuracy with seed bands](sweep_accuracy.png)", ""]
    if frontier:
        lines += ["![accuracy vs length per grid point](sweep_frontier.png)", ""]
    if baseline is not None and baseline in runs and len(runs) > 1:
        changes = paired_changes(runs, baseline, target)
        drawn = _figure(lambda r, fig: _draw_paired(r, fig, changes, baseline), runs, out / "sweep_paired.png")
        lines += [f"## Against {baseline}, paired by seed", "",
                  f"Each run minus {baseline}'s run of the same seed (same DFT start): mean +- sample std over "
                  "seeds, then each seed's value.", "", *_markdown(paired_table(changes)), ""]
        if drawn:
            lines += [f"![change against {baseline} per seed](sweep_paired.png)", ""]
    path = out / "sweep.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def collect(out: Path, combos: list[Combo]) -> tuple[Runs, list[str]]:
    """Each grid point's finished runs by seed (any RL step logged) and the run folders without metrics."""
    runs: Runs = {}
    missing: list[str] = []
    for combo in combos:
        folder = combo.run_dir(out)
        run = load_run(folder) if (folder / "metrics.jsonl").is_file() else None
        if run is None or not run.records:
            missing.append(str(folder))
            continue
        runs.setdefault(combo.point_name, {})[combo.seed] = run
    return runs, missing


def dft_overrides(seed: int) -> list[str]:
    """The overrides of seed `seed`'s shared DFT run (`DFT_ONLY` with the seed's RL and DFT seeds)."""
    return [*DFT_ONLY, *seed_overrides(seed), *(f"{k}={seed}" for k in DFT_SEED_KEYS)]


def sweep(recipe: Path, overrides: list[str], seeds: list[int], grid: list[tuple[Setting, ...]], out: Path,
          target: float, report_only: bool = False, echo=print, baseline: str | None = None) -> Path:
    """Run every combination not done yet (unless `report_only`), then write the report (paired
    with the grid point `baseline` when given); returns sweep.md.

    Every combination's recipe is loaded first, so a bad key or value fails before any run starts."""
    from ling_rl.config import load_recipe

    combos = plan(seeds, grid)
    names = list(dict.fromkeys(combo.point_name for combo in combos))
    if baseline is not None and baseline not in names:
        raise ValueError(f"--baseline: {baseline!r} is not a grid point of this sweep; its points: {', '.join(names)}")
    steps = {combo: load_recipe(recipe, [*overrides, *combo.overrides()]).run.steps for combo in combos}
    out.mkdir(parents=True, exist_ok=True)
    with_dft = load_recipe(recipe, overrides).dft.enabled
    if not report_only:
        for i, combo in enumerate(combos, 1):
            where = combo.run_dir(out)
            if is_done(where, steps[combo]):
                echo(f"[{i}/{len(combos)}] {where}: done already")
                continue
            shared = from_dft(dft_start(recipe, overrides, combo.seed, out, echo)) if with_dft else []
            args = [*overrides, *shared, *combo.overrides()]
            echo(f"[{i}/{len(combos)}] {where}: ling-rl train {recipe} {' '.join(args)}")
            code = train(recipe, args, where)
            if code != 0:
                echo(f"[{i}/{len(combos)}] {where}: exit code {code}; its metrics so far are reported")
    runs, missing = collect(out, combos)
    if not runs:
        raise ValueError(f"{out}: no run of the sweep has metrics yet")
    return write_report(out, runs, target, missing, baseline)


def dft_start(recipe: Path, overrides: list[str], seed: int, out: Path, echo=print) -> Path:
    """Seed `seed`'s shared DFT folder, `OUT/dft/seed-<s>`, run first if it holds no export yet."""
    dft_dir = out / "dft" / f"seed-{seed}"
    if not (dft_dir / "hf_final" / "config.json").is_file():
        args = [*overrides, *dft_overrides(seed)]
        echo(f"shared DFT of seed {seed}: ling-rl train {recipe} {' '.join(args)} --run-dir {dft_dir}")
        if train(recipe, args, dft_dir) != 0:
            raise ValueError(f"the shared DFT run of seed {seed} failed; see {dft_dir}")
    return dft_dir
