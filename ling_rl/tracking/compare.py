"""`ling-rl report RUN_DIR OTHER_RUN_DIR ...`: several runs on one figure and one table.

Made for A/B runs of one recipe (e.g. Evo-CoT's length term on and off, same seed): the
accuracy-vs-length points of each run's held-out evaluations with each run's Pareto frontier, its
eval accuracy curves, and a table of where each run started and ended. A frontier that moves left
at the same height is the same accuracy with shorter responses.

    run_dir/metrics.jsonl (each run) ──> RunData ──> compare_frontier.png, compare_accuracy.png, compare.md
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ling_rl.tracking.report import (
    FrontierPoint,
    RunData,
    eval_accuracy_keys,
    fmt,
    load_run,
    pareto_frontier,
)

COMPARE_FILE = "compare.md"
ACCURACY_KEY = "eval/accuracy_greedy"
LENGTH_KEY = "eval/response_len_greedy"


def eval_points(run: RunData) -> list[FrontierPoint]:
    """(greedy response length, greedy accuracy) of each held-out evaluation of `run`."""
    points = []
    for step, accuracy in zip(*run.series(ACCURACY_KEY)):
        record = next(r for r in run.records if r["step"] == step)
        length = record.get(LENGTH_KEY)
        if isinstance(length, int | float):
            points.append(FrontierPoint(float(length), float(accuracy), int(step), None))
    return points


def comparison_rows(runs: list[RunData]) -> list[list[str]]:
    """One row per run: each eval accuracy key first -> final, the final greedy length and units,
    and the final length relative to the first run's."""
    keys = sorted({k for run in runs for k in eval_accuracy_keys(run)}, key=lambda k: (k.count("/"), k))
    header = ["run", *(f"{k}: first -> final" for k in keys), "final greedy length (tokens)", "vs first run",
              "final eval/units_greedy"]
    rows = [header]
    base = _final(runs[0], LENGTH_KEY)
    for run in runs:
        cells = [run.name]
        for key in keys:
            _, values = run.series(key)
            cells.append(f"{fmt(values[0])} -> {fmt(values[-1])}" if len(values) else "-")
        length = _final(run, LENGTH_KEY)
        cells.append(fmt(length) if length is not None else "-")
        cells.append(f"{100 * (length / base - 1):+.1f}%" if length is not None and base else "-")
        units = _final(run, "eval/units_greedy")
        cells.append(fmt(units) if units is not None else "-")
        rows.append(cells)
    return rows


def _final(run: RunData, key: str) -> float | None:
    _, values = run.series(key)
    return float(values[-1]) if len(values) else None


def _draw_frontiers(runs: list[RunData], fig: Figure) -> None:
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        points = eval_points(run)
        color = f"C{i % 10}"
        ax.scatter([p.length for p in points], [p.accuracy for p in points], color=color, alpha=0.4, s=18)
        front = pareto_frontier(points)
        ax.plot([p.length for p in front], [p.accuracy for p in front], color=color, drawstyle="steps-post",
                marker="D", markersize=5, linewidth=1.8, label=f"{run.name} frontier")
        if points:
            last = points[-1]
            ax.scatter([last.length], [last.accuracy], color=color, marker="*", s=160, edgecolor="black",
                       zorder=3, label=f"{run.name} final (step {last.step})")
    ax.set(xlabel="mean greedy response length (tokens)", ylabel="greedy accuracy (held-out)",
           title="Accuracy vs. length, one frontier per run")
    ax.legend(loc="best", fontsize="small")


def _draw_accuracy(runs: list[RunData], fig: Figure) -> None:
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(runs):
        for j, key in enumerate(eval_accuracy_keys(run)):
            steps, values = run.series(key)
            ax.plot(steps, values, color=f"C{i % 10}", linestyle=styles[j % len(styles)], marker="o", markersize=3,
                    label=f"{run.name}: {key}")
    ax.set(xlabel="step", ylabel="accuracy", title="Held-out accuracy per run")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def build_comparison(run_dirs: list[Path], out_dir: Path) -> Path:
    """Write compare_frontier.png, compare_accuracy.png and compare.md for >= 2 runs; returns compare.md.

    Raises ValueError for fewer than two runs or a run without RL steps, FileNotFoundError for a
    folder without metrics.jsonl."""
    if len(run_dirs) < 2:
        raise ValueError("a comparison needs at least two run folders")
    runs = [load_run(Path(d)) for d in run_dirs]
    for run_dir, run in zip(run_dirs, runs):
        if not run.records:
            raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'}: no RL step recorded yet")
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # two runs of one recipe: tell them apart by folder
        runs = [RunData(name=str(d), records=r.records, dft=r.dft, stages=r.stages) for d, r in zip(run_dirs, runs)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, draw, size in (("compare_frontier.png", _draw_frontiers, (8, 5)),
                             ("compare_accuracy.png", _draw_accuracy, (10, 4.5))):
        fig = Figure(figsize=size, dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        draw(runs, fig)
        fig.savefig(out_dir / file)
    rows = comparison_rows(runs)
    lines = ["# Run comparison", "", *(f"- `{d}`" for d in run_dirs), "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += ["", "## Accuracy vs. length", "", "![frontiers](compare_frontier.png)", "",
              "## Held-out accuracy", "", "![accuracy](compare_accuracy.png)", ""]
    path = out_dir / COMPARE_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
