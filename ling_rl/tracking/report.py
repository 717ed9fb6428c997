"""`ling-rl report RUN_DIR`: PNG plots and a markdown summary of a run, read from its metrics.

    run_dir/metrics.jsonl ──┐
    run_dir/dft_metrics.jsonl (optional) ──┴─> RunData ──> one PNG per plot ──┐
                                                      └──> summary tables ───┴─> report/report.md
    run_dir/wandb_run_id + recipe.yaml (online) ──> upload_report(): the PNGs to that W&B run

Every plot draws the keys the run has and is skipped when it has none of them; report.md lists
what was absent. Runs with an `environment:` section (multi-turn episodes) get an agent panel
(agent.png, `agent/*` and `eval/agent/*`) and an "Agentic episodes" table; other runs get neither,
and are not told they lack them. Figures are drawn on matplotlib's Agg canvas without pyplot, so building a report
changes no global matplotlib state.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ling_rl.tracking.config import WandbConfig
from ling_rl.tracking.jsonl import read_jsonl, read_metrics
from ling_rl.tracking.wandb_sink import RUN_ID_FILE, wandb_mode

DFT_METRICS_FILE = "dft_metrics.jsonl"
REPORT_DIR = "report"
REPORT_FILE = "report.md"

STAGE_KEY = "curriculum/stage"
TRAIN_ACCURACY_KEY = "curriculum/accuracy"
EVAL_ACCURACY_KEYS = ("eval/accuracy_greedy", "eval/accuracy_sampled")
PHASE_ORDER = ("generate", "reward", "learner", "sync", "other")
_PLUGIN_REWARD = re.compile(r"^reward/([^/]+)/mean$")
# Accuracy of an `eval.extra_data` set (e.g. eval/ood/accuracy_greedy).
_EXTRA_EVAL_ACCURACY = re.compile(r"^eval/([^/]+)/accuracy_(greedy|sampled)$")
UNITS_KEYS = ("eval/units_greedy", "eval/units_sampled")
_FIRST_LAST = 5
AGENT_PREFIXES = ("agent/", "eval/agent/")
"""Multi-turn episodes (`environment:`): the training episodes' counts per step (`agent/*`,
ling_rl/rollout/episodes.py `episode_metrics`) and the greedy evaluation episodes' (`eval/agent/*`)."""


@dataclass(frozen=True)
class StageSpan:
    """A curriculum stage and the RL steps it covered (`end` inclusive)."""

    stage: int
    start: int
    end: int


@dataclass(frozen=True)
class FrontierPoint:
    """One (mean response length, accuracy) point of a step or an eval, with its stage."""

    length: float
    accuracy: float
    step: int
    stage: int | None


@dataclass(frozen=True)
class RunData:
    """What a report is built from: RL step records, DFT warm-start records, curriculum stages."""

    name: str
    records: list[dict[str, Any]]
    dft: list[dict[str, Any]]
    stages: list[StageSpan]

    def has(self, key: str) -> bool:
        return any(_number(r.get(key)) is not None for r in self.records)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of `key` over the RL steps that logged a number for it."""
        return _series(self.records, key)

    def keys(self) -> list[str]:
        return sorted({k for r in self.records for k in r if k not in ("step", "time")})


def load_run(run_dir: Path) -> RunData:
    """Read a run folder: metrics.jsonl (required), dft_metrics.jsonl (optional).

    DFT warm-start lines are those with a `dft/loss` key or a negative step, in either file;
    the rest of metrics.jsonl are RL steps.
    """
    run_dir = Path(run_dir)
    everything = read_metrics(run_dir)
    dft_file = run_dir / DFT_METRICS_FILE
    dft_extra = read_jsonl(dft_file) if dft_file.is_file() else []
    is_dft = [("dft/loss" in r or r["step"] < 0) for r in everything]
    records = [r for r, d in zip(everything, is_dft) if not d]
    dft = [r for r, d in zip(everything, is_dft) if d] + dft_extra
    return RunData(name=_run_name(run_dir), records=records, dft=dft, stages=stage_spans(records))


def stage_spans(records: list[dict[str, Any]]) -> list[StageSpan]:
    """Consecutive runs of one `curriculum/stage` value; empty when the run logged no stage."""
    spans: list[StageSpan] = []
    for step, value in zip(*_series(records, STAGE_KEY)):
        stage = int(value)
        if spans and spans[-1].stage == stage:
            spans[-1] = StageSpan(stage, spans[-1].start, int(step))
        else:
            spans.append(StageSpan(stage, int(step), int(step)))
    return spans


def pareto_frontier(points: list[FrontierPoint]) -> list[FrontierPoint]:
    """The points no other point beats on both counts (shorter or equal length, higher accuracy),
    by increasing length.

    >>> pts = [FrontierPoint(10, 0.2, 0, 0), FrontierPoint(20, 0.1, 1, 0), FrontierPoint(30, 0.5, 2, 0)]
    >>> [p.step for p in pareto_frontier(pts)]
    [0, 2]
    """
    frontier: list[FrontierPoint] = []
    for p in sorted(points, key=lambda p: (p.length, -p.accuracy)):
        if not frontier or p.accuracy > frontier[-1].accuracy:
            frontier.append(p)
    return frontier


def frontier_points(run: RunData) -> dict[str, list[FrontierPoint]]:
    """Accuracy-vs-length points by source: `train` (per step: `curriculum/accuracy` against
    `rollout/response_len_mean`) and `eval` (per eval step: greedy accuracy, else sampled, against
    the mean length of the same mode's responses, `eval/response_len_<mode>`, else
    `eval/response_len_mean`). A source the run lacks is left out."""
    sources: dict[str, list[FrontierPoint]] = {}
    pairs = [("train", TRAIN_ACCURACY_KEY, "rollout/response_len_mean")]
    for mode in ("greedy", "sampled"):
        accuracy_key = f"eval/accuracy_{mode}"
        length_key = next((k for k in (f"eval/response_len_{mode}", "eval/response_len_mean")
                           if _paired(run, accuracy_key, k)), None)
        if length_key is not None:
            pairs.append((f"eval ({mode})", accuracy_key, length_key))
            break
    for source, accuracy_key, length_key in pairs:
        points = []
        for r in run.records:
            accuracy, length = _number(r.get(accuracy_key)), _number(r.get(length_key))
            if accuracy is not None and length is not None:
                points.append(FrontierPoint(length, accuracy, r["step"], _stage_at(run.stages, r["step"])))
        if points:
            sources[source] = points
    return sources


# ---------------------------------------------------------------------------------------------
# Plots: each draws on a figure and returns False when the run has nothing for it.


@dataclass(frozen=True)
class Plot:
    file: str
    title: str
    needs: str
    draw: Callable[[RunData, Figure], bool]
    size: tuple[float, float] = (8, 4.5)
    """Figure size in inches."""
    optional: bool = False
    """Only some runs can have it (e.g. the agent panel, runs with an environment): not listed
    under "Not in this run" when absent."""


def _draw_reward(run: RunData, fig: Figure) -> bool:
    ax = fig.add_subplot()
    drew = _lines(ax, run, ["reward/mean"], linewidth=2.0)
    plugins = sorted(k for k in run.keys() if _PLUGIN_REWARD.match(k))
    drew |= _lines(ax, run, plugins, linewidth=1.0, alpha=0.8)
    _stage_marks(ax, run.stages)
    ax.set(xlabel="step", ylabel="reward", title="Reward (total and per plugin)")
    return drew


def eval_accuracy_keys(run: RunData) -> list[str]:
    """`eval/accuracy_<mode>`, then each `eval.extra_data` set's, the run has."""
    extra = sorted(k for k in run.keys() if _EXTRA_EVAL_ACCURACY.match(k))
    return [k for k in (*EVAL_ACCURACY_KEYS, *extra) if run.has(k)]


def _draw_eval_accuracy(run: RunData, fig: Figure) -> bool:
    ax = fig.add_subplot()
    drew = _lines(ax, run, eval_accuracy_keys(run), marker="o")
    if drew:
        _lines(ax, run, [TRAIN_ACCURACY_KEY], linewidth=0.8, alpha=0.5)
    _stage_marks(ax, run.stages)
    ax.set(xlabel="step", ylabel="accuracy", title="Eval accuracy (greedy / sampled; per held-out set)")
    return drew


def _draw_length(run: RunData, fig: Figure) -> bool:
    ax = fig.add_subplot()
    drew = _lines(ax, run, ["rollout/response_len_mean"])
    drew |= _lines(ax, run, ["eval/response_len_mean", "eval/response_len_greedy"], marker="o")
    _stage_marks(ax, run.stages)
    ax.set(xlabel="step", ylabel="tokens", title="Mean response length")
    return drew


def _draw_clip(run: RunData, fig: Figure) -> bool:
    ax = fig.add_subplot()
    drew = _lines(ax, run, ["policy/clip_frac_unit", "policy/clip_frac_token"])
    ax.set(xlabel="step", ylabel="fraction clipped", title="Clip fraction")
    return drew


def _draw_gap(run: RunData, fig: Figure) -> bool:
    ax = fig.add_subplot()
    drew = _lines(ax, run, ["sync/gap_mean", "sync/gap_max"])
    values = np.concatenate([run.series(k)[1] for k in ("sync/gap_mean", "sync/gap_max")])
    # A log scale cannot show an exact 0 (bit-identical log-probs): then the axis stays linear.
    log = drew and bool((values > 0).all())
    if log:
        ax.set_yscale("log")
    scale = "log scale" if log else "linear scale: some values are 0"
    ax.set(xlabel="step", ylabel="|log pi_learner - log pi_vllm|", title=f"Train/inference gap ({scale})")
    return drew


def _draw_loss(run: RunData, fig: Figure) -> bool:
    ax = fig.add_subplot()
    drew = _lines(ax, run, ["train/loss"])
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    return drew


def _draw_dft_loss(run: RunData, fig: Figure) -> bool:
    ax = fig.add_subplot()
    steps, values = _series(run.dft, "dft/loss")
    if len(steps) == 0:
        return False
    ax.plot(steps, values, label="dft/loss")
    _legend(ax)
    ax.set(xlabel="DFT step", ylabel="loss", title="DFT warm-start loss")
    return True


def _draw_step_time(run: RunData, fig: Figure) -> bool:
    phases = _phases(run)
    if not phases:
        return False
    ax = fig.add_subplot()
    steps = np.array([r["step"] for r in run.records])
    stacked = [np.array([_number(r.get(f"time/{p}")) or 0.0 for r in run.records]) for p in phases]
    ax.stackplot(steps, stacked, labels=phases, alpha=0.85)
    total_steps, total = run.series("time/step")
    if len(total_steps):
        ax.plot(total_steps, total, color="black", linewidth=1.0, label="step (total)")
    _legend(ax)
    ax.set(xlabel="step", ylabel="seconds", title="Step time by phase")
    return True


def _draw_stages(run: RunData, fig: Figure) -> bool:
    if not run.stages:
        return False
    ax = fig.add_subplot()
    steps, values = run.series(STAGE_KEY)
    ax.plot(steps, values, drawstyle="steps-post", linewidth=2.0)
    for span in run.stages[1:]:
        ax.axvline(span.start, color="gray", linestyle="--", linewidth=0.8)
        ax.annotate(f"stage {span.stage} @ {span.start}", (span.start, span.stage), xytext=(3, 3),
                    textcoords="offset points", fontsize="small")
    ax.set_yticks(sorted({s.stage for s in run.stages}))
    ax.set(xlabel="step", ylabel="stage", title="Curriculum stage")
    return True


def _draw_frontier(run: RunData, fig: Figure) -> bool:
    sources = frontier_points(run)
    if not sources:
        return False
    axes = fig.subplots(1, len(sources), squeeze=False)[0]
    colors = _stage_colors(run.stages)
    for ax, (source, points) in zip(axes, sources.items()):
        for stage in sorted({p.stage for p in points}, key=lambda s: -1 if s is None else s):
            own = [p for p in points if p.stage == stage]
            label = "all steps" if stage is None else f"stage {stage}"
            color = colors.get(stage, "C0")
            ax.scatter([p.length for p in own], [p.accuracy for p in own], color=color, alpha=0.45, s=18)
            front = pareto_frontier(own)
            ax.plot([p.length for p in front], [p.accuracy for p in front], color=color,
                    drawstyle="steps-post", marker="D", markersize=5, linewidth=1.8, label=f"{label} frontier")
        ax.set(xlabel="mean response length (tokens)", ylabel="accuracy", title=f"Accuracy vs. length: {source}")
        ax.legend(loc="best", fontsize="small")
    fig.suptitle("dots: one per step or eval; lines: each stage's Pareto frontier (shorter and more accurate)",
                 fontsize="small")
    return True


def agent_keys(run: RunData, prefix: str = "agent/") -> list[str]:
    """The run's episode metrics under `prefix` (`agent/` or `eval/agent/`) that hold a number."""
    return [k for k in run.keys() if k.startswith(prefix) and run.has(k)]


def _agent_kind(key: str) -> str:
    """`mean` (per episode: turns, tool calls, valid calls), `seconds` (tool time) or `count`
    (totals per step: outcomes, parse errors, cuts, failed episodes)."""
    name = key.rsplit("/", 1)[1]
    return "mean" if name.endswith("_mean") else "seconds" if name.endswith("_seconds") else "count"


def _draw_agent(run: RunData, fig: Figure) -> bool:
    train, evals = agent_keys(run), agent_keys(run, "eval/agent/")
    if not train and not evals:
        return False
    (per_episode, outcomes), (limits, seconds) = fig.subplots(2, 2)
    means = [k for k in train if _agent_kind(k) == "mean"]
    _lines(per_episode, run, means)
    _lines(per_episode, run, [k for k in evals if _agent_kind(k) == "mean"], marker="o", linestyle="--")
    per_episode.set(xlabel="step", ylabel="per episode", title="Turns and tool calls (mean per episode)")
    # Counts that never left 0 are left out: a flat line per outcome would hide the ones that matter.
    counts = [k for k in train if _agent_kind(k) == "count" and k != "agent/episodes" and run.series(k)[1].any()]
    problems = [k for k in counts if "cut" not in k and "failed" not in k and not k.endswith("/tool_ok")]
    if not _lines(outcomes, run, problems):
        outcomes.text(0.5, 0.5, "no tool errors, bad calls, timeouts or crashes", ha="center", va="center",
                      transform=outcomes.transAxes)
    outcomes.set(xlabel="step", ylabel="per step", title="Tool-call problems (count per step)")
    if not _lines(limits, run, [k for k in counts if "cut" in k or "failed" in k]):
        limits.text(0.5, 0.5, "no episode cut by a limit or failed", ha="center", va="center", transform=limits.transAxes)
    limits.set(xlabel="step", ylabel="per step", title="Episodes cut by a limit, failed (count per step)")
    if not _lines(seconds, run, [k for k in train if _agent_kind(k) == "seconds"]):
        seconds.set_visible(False)
    seconds.set(xlabel="step", ylabel="seconds", title="Time in tools (sum per step)")
    return True


PLOTS: tuple[Plot, ...] = (
    Plot("reward.png", "reward", "reward/mean or reward/<plugin>/mean", _draw_reward),
    Plot("eval_accuracy.png", "eval accuracy", "eval/accuracy_greedy or eval/accuracy_sampled", _draw_eval_accuracy),
    Plot("response_length.png", "response length", "rollout/response_len_mean or eval/response_len_*",
         _draw_length),
    Plot("clip_fraction.png", "clip fraction", "policy/clip_frac_unit or policy/clip_frac_token", _draw_clip),
    Plot("gap.png", "train/inference gap", "sync/gap_mean or sync/gap_max", _draw_gap),
    Plot("loss.png", "loss", "train/loss", _draw_loss),
    Plot("dft_loss.png", "DFT warm-start loss", "dft/loss (metrics.jsonl or dft_metrics.jsonl)", _draw_dft_loss),
    Plot("step_time.png", "step time", "time/<phase>", _draw_step_time),
    Plot("stages.png", "curriculum stages", STAGE_KEY, _draw_stages),
    Plot("frontier.png", "accuracy-vs-length frontier",
         "curriculum/accuracy with rollout/response_len_mean, or eval accuracy with eval/response_len_mean",
         _draw_frontier),
    Plot("agent.png", "agentic episodes", "agent/* or eval/agent/* (runs with an environment: section)", _draw_agent,
         size=(13, 7.5), optional=True),
)


# ---------------------------------------------------------------------------------------------
# The report.


def build_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write one PNG per plot the run has data for and `report.md` to `out_dir`
    (default `run_dir/report/`); returns the path of report.md.

    Raises FileNotFoundError when `run_dir` has no metrics.jsonl, ValueError when it has no RL step.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if not run.records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no RL step recorded yet")
    folder = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    images: list[tuple[Plot, Path]] = []
    skipped: list[Plot] = []
    for plot in PLOTS:
        wide = plot.file == "frontier.png" and len(frontier_points(run)) > 1
        fig = Figure(figsize=(12, 4.5) if wide else plot.size, dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        if plot.draw(run, fig):
            path = folder / plot.file
            fig.savefig(path)
            images.append((plot, path))
        elif not plot.optional:
            skipped.append(plot)
    report = folder / REPORT_FILE
    report.write_text(_markdown(run, run_dir, images, skipped), encoding="utf-8")
    return report


def upload_report(run_dir: Path, report_dir: Path) -> str:
    """Log the report's PNGs to the run's W&B run when it has one and tracking was online.

    Returns one line saying what happened (uploaded, or why not). The W&B run is resumed with
    `resume="must"`: an id W&B does not know is an error from W&B, not a new run.
    """
    run_dir = Path(run_dir)
    reason, run_id, cfg = wandb_target(run_dir)
    if run_id is None or cfg is None:
        return f"W&B upload skipped: {reason}"
    import wandb

    images = sorted(Path(report_dir).glob("*.png"))
    run = wandb.init(id=run_id, resume="must", project=cfg.project, entity=cfg.entity, mode="online",
                     dir=str(run_dir), reinit="create_new")
    try:
        run.log({f"report/{p.stem}": wandb.Image(str(p)) for p in images})
    finally:
        run.finish()
    return f"uploaded {len(images)} plots to W&B run {run_id}"


def wandb_target(run_dir: Path) -> tuple[str, str | None, WandbConfig | None]:
    """(reason, run id, W&B settings) of the run: id and settings when the report should go to
    W&B (the run has a `wandb_run_id` and its mode, `WANDB_MODE` first, is online), else a reason."""
    id_file = run_dir / RUN_ID_FILE
    if not id_file.is_file():
        return f"{id_file.name} not found in {run_dir} (the run did not log to W&B)", None, None
    recipe_file = run_dir / "recipe.yaml"
    raw = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) if recipe_file.is_file() else None
    section = ((raw or {}).get("tracking") or {}).get("wandb") or {}
    cfg = WandbConfig.model_validate(section)
    mode = wandb_mode(cfg)
    if mode != "online":
        return f"W&B mode is {mode} (recipe tracking.wandb, or WANDB_MODE), not online", None, None
    return "", id_file.read_text(encoding="utf-8").strip(), cfg


def _markdown(run: RunData, run_dir: Path, images: list[tuple[Plot, Path]], skipped: list[Plot]) -> str:
    lines = [f"# Run report: {run.name}", "", f"Run folder: `{run_dir}`", ""]
    lines += ["## Summary", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in _summary_rows(run)]
    if run.stages:
        lines += ["", "## Stages", "", "| stage | started at step | steps | mean reward | mean response length |",
                  "|---|---|---|---|---|"]
        for span in run.stages:
            inside = [r for r in run.records if span.start <= r["step"] <= span.end]
            lines.append(f"| {span.stage} | {span.start} | {len(inside)} | {_mean_of(inside, 'reward/mean')} "
                         f"| {_mean_of(inside, 'rollout/response_len_mean')} |")
    sources = frontier_points(run)
    if sources:
        lines += ["", "## Accuracy vs. mean response length frontier", "",
                  "Per stage, the points no other point of that stage beats on both shorter length and "
                  "higher accuracy.", "", "| source | stage | step | mean response length | accuracy |",
                  "|---|---|---|---|---|"]
        for source, points in sources.items():
            for stage in sorted({p.stage for p in points}, key=lambda s: -1 if s is None else s):
                for p in pareto_frontier([q for q in points if q.stage == stage]):
                    label = "all" if stage is None else str(stage)
                    lines.append(f"| {source} | {label} | {p.step} | {fmt(p.length)} | {fmt(p.accuracy)} |")
    lines += _agent_section(run)
    lines += ["", "## Plots", ""]
    for plot, path in images:
        lines += [f"### {plot.title}", "", f"![{plot.title}]({path.name})", ""]
    if skipped:
        lines += ["## Not in this run", ""]
        lines += [f"- {plot.title} plot skipped: no {plot.needs}" for plot in skipped]
        lines.append("")
    return "\n".join(lines)


def _summary_rows(run: RunData) -> list[tuple[str, str]]:
    steps = [r["step"] for r in run.records]
    rows = [("RL steps", f"{len(steps)} (steps {steps[0]} to {steps[-1]})")]
    if run.dft:
        _, dft_loss = _series(run.dft, "dft/loss")
        detail = f", dft/loss {fmt(dft_loss[0])} -> {fmt(dft_loss[-1])}" if len(dft_loss) else ""
        rows.append(("DFT warm-start steps", f"{len(run.dft)}{detail}"))
    for key in ["reward/mean", *sorted(k for k in run.keys() if _PLUGIN_REWARD.match(k))]:
        _, values = run.series(key)
        if len(values):
            rows.append((f"{key}, first {_FIRST_LAST} steps", fmt(values[:_FIRST_LAST].mean())))
            rows.append((f"{key}, last {_FIRST_LAST} steps", fmt(values[-_FIRST_LAST:].mean())))
    for key in eval_accuracy_keys(run):
        steps_k, values = run.series(key)
        rows.append((f"{key}: first eval -> final", f"{fmt(values[0])} (step {int(steps_k[0])}) -> "
                     f"{fmt(values[-1])} (step {int(steps_k[-1])}), {_points(values[-1] - values[0])}"))
    for key in (*eval_accuracy_keys(run), TRAIN_ACCURACY_KEY):
        steps_k, values = run.series(key)
        if len(values):
            best = int(np.argmax(values))
            rows.append((f"best {key}", f"{fmt(values[best])} at step {int(steps_k[best])}"))
    for key in (*UNITS_KEYS, "eval/response_len_greedy"):
        steps_k, values = run.series(key)
        if len(values):
            rows.append((f"{key}: first eval -> final", f"{fmt(values[0])} -> {fmt(values[-1])}"))
    for key in ("sync/gap_mean", "sync/gap_max", "train/loss"):
        steps_k, values = run.series(key)
        if len(values):
            rows.append((f"final {key}", f"{fmt(values[-1])} (step {int(steps_k[-1])})"))
    rows += _time_rows(run)
    if run.stages:
        started = ", ".join(f"{s.stage} at step {s.start}" for s in run.stages)
        rows.append(("curriculum stages", started))
    return rows


def _agent_section(run: RunData) -> list[str]:
    """The episode metrics of a run with an environment (none: no section): per training metric
    the mean of the first and last steps and, for counts and seconds, the total over the run; per
    evaluation metric the first and the final evaluation."""
    train, evals = agent_keys(run), agent_keys(run, "eval/agent/")
    if not train and not evals:
        return []
    lines = ["", "## Agentic episodes", ""]
    if train:
        lines += ["Training episodes, per step (`agent/*`): means per episode, and counts summed over the step's "
                  "episodes.", "", f"| metric | first {_FIRST_LAST} steps | last {_FIRST_LAST} steps | whole run |",
                  "|---|---|---|---|"]
        for key in sorted(train, key=lambda k: (["mean", "count", "seconds"].index(_agent_kind(k)), k)):
            _, values = run.series(key)
            total = "-" if _agent_kind(key) == "mean" else f"{fmt(values.sum())} in all"
            lines.append(f"| {key} | {fmt(values[:_FIRST_LAST].mean())} | {fmt(values[-_FIRST_LAST:].mean())} "
                         f"| {total} |")
    if evals:
        lines += ["", "Greedy evaluation episodes (`eval/agent/*`).", "", "| metric | first eval | final eval |",
                  "|---|---|---|"]
        for key in sorted(evals, key=lambda k: (["mean", "count", "seconds"].index(_agent_kind(k)), k)):
            steps_k, values = run.series(key)
            lines.append(f"| {key} | {fmt(values[0])} (step {int(steps_k[0])}) | {fmt(values[-1])} "
                         f"(step {int(steps_k[-1])}) |")
    return lines


def _time_rows(run: RunData) -> list[tuple[str, str]]:
    phases = _phases(run)
    # Per RL step, over every step: a phase that runs only on some steps (eval) counts 0 on the others.
    means = {p: float(run.series(f"time/{p}")[1].sum()) / len(run.records) for p in phases}
    _, step_time = run.series("time/step")
    total = float(step_time.mean()) if len(step_time) else sum(means.values())
    if not phases and not len(step_time):
        return []
    rows = [("mean step time", f"{fmt(total)} s")]
    if total > 0:
        rows += [(f"time share: {p}", f"{100 * means[p] / total:.1f}% ({fmt(means[p])} s)") for p in phases]
    return rows


def _phases(run: RunData) -> list[str]:
    present = {k.removeprefix("time/") for k in run.keys()
               if k.startswith("time/") and k != "time/step" and run.has(k)}
    return [p for p in PHASE_ORDER if p in present] + sorted(present - set(PHASE_ORDER))


def _points(delta: float) -> str:
    """An accuracy difference in percentage points, signed."""
    return f"{100 * delta:+.1f} points"


def fmt(value: float) -> str:
    """Numbers in report.md: 4 significant digits."""
    return f"{value:.4g}"


def _mean_of(records: list[dict[str, Any]], key: str) -> str:
    _, values = _series(records, key)
    return fmt(values.mean()) if len(values) else "-"


def _lines(ax: Axes, run: RunData, keys: list[str], **style: Any) -> bool:
    drew = False
    for key in keys:
        steps, values = run.series(key)
        if len(steps):
            ax.plot(steps, values, label=key, **style)
            drew = True
    if drew:
        _legend(ax)
    return drew


def _legend(ax: Axes) -> None:
    # Outside the axes, right: a legend never hides the curves or the stage labels.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _stage_marks(ax: Axes, stages: list[StageSpan]) -> None:
    """Shade every other stage and draw a dashed line where each new stage starts."""
    if len(stages) < 2:
        return
    for i, span in enumerate(stages):
        if i % 2 == 1:
            ax.axvspan(span.start - 0.5, span.end + 0.5, color="gray", alpha=0.12, linewidth=0)
        if i > 0:
            ax.axvline(span.start - 0.5, color="gray", linestyle="--", linewidth=0.8)
        ax.annotate(f"stage {span.stage}", (span.start - 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize="x-small", color="dimgray")


def _stage_colors(stages: list[StageSpan]) -> dict[int | None, str]:
    return {stage: f"C{i % 10}" for i, stage in enumerate(sorted({s.stage for s in stages}))}


def _stage_at(stages: list[StageSpan], step: int) -> int | None:
    """The stage in force at `step`: the latest stage that started at or before it."""
    current = None
    for span in stages:
        if span.start <= step:
            current = span.stage
    return current


def _paired(run: RunData, key_a: str, key_b: str) -> bool:
    return any(_number(r.get(key_a)) is not None and _number(r.get(key_b)) is not None for r in run.records)


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r["step"], v) for r in records if (v := _number(r.get(key))) is not None]
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.float64)


def _number(value: object) -> float | None:
    """A finite real number, else None (missing keys, `null` for NaN, anything not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _run_name(run_dir: Path) -> str:
    recipe_file = run_dir / "recipe.yaml"
    if recipe_file.is_file():
        raw = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}
        name = (raw.get("run") or {}).get("name")
        if isinstance(name, str):
            return name
    return run_dir.resolve().name
