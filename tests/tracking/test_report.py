"""`ling-rl report`: plots and report.md from a synthetic run folder, missing metrics, W&B upload rule, CLI."""

from __future__ import annotations

import json
import random
import struct
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from typer.testing import CliRunner

from ling_rl.commands.cli import app
from ling_rl.tracking import RUN_ID_FILE
from ling_rl.tracking.report import (
    PLOTS,
    FrontierPoint,
    build_report,
    fmt,
    frontier_points,
    load_run,
    pareto_frontier,
    upload_report,
    wandb_target,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 20
STAGE_STARTS = (0, 8, 16)  # stage 0: steps 0-7, stage 1: 8-15, stage 2: 16-19


def _stage(step: int) -> int:
    return sum(step >= start for start in STAGE_STARTS) - 1


def _reward(step: int) -> float:
    return 0.1 + 0.031 * step + 0.013 * (step % 3)


def _length(step: int) -> float:
    return 100.0 + 50.0 * _stage(step) + (step * 7) % 11  # distinct within each stage


def _accuracy(step: int) -> float:
    return 0.2 + 0.02 * step + 0.05 * ((step * 5) % 3)


def _eval_step(step: int) -> bool:
    return step % 4 == 3


def _agent_metrics(step: int, prefix: str = "") -> dict[str, float]:
    """A step's `agent/*` as the episode loop computes them (`episode_metrics`), from four episodes:
    two valid calls; a call that raised on odd steps; a malformed call from step 10; a run to
    max_turns with an unknown tool, whose environment crashed at step 7."""
    from ling_rl.rollout.episodes import episode_metrics
    from ling_rl.types import EpisodeInfo, Rollout, Sample

    infos = [EpisodeInfo(turns=3, tool_calls=2, outcomes={"ok": 2}, tool_seconds=0.01 * step),
             EpisodeInfo(turns=2, tool_calls=1, outcomes={"error" if step % 2 else "ok": 1}),
             EpisodeInfo(turns=1, parse_errors=int(step >= 10), outcomes={"bad_call": int(step >= 10)}),
             EpisodeInfo(turns=4, tool_calls=4, outcomes={"ok": 3, "unknown_tool": 1}, cut="max_turns",
                         failure="tool process crashed" if step == 7 else None)]
    rollouts = [Rollout(sample=Sample(id=str(i), prompt="", prompt_ids=[]), group=0, response_ids=[], response_text="",
                        inf_logprobs=[], finish_reason="stop", policy_version=step, episode=info)
                for i, info in enumerate(infos)]
    return {prefix + k: v for k, v in episode_metrics(rollouts).items()}


def _full_record(step: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "step": step,
        "time": 1000.0 + step,
        "reward/mean": _reward(step),
        "reward/exact_answer/mean": 0.02 * step,
        "reward/numeric_response/mean": 0.5 + 0.01 * step,
        "rollout/response_len_mean": _length(step),
        "policy/clip_frac_unit": 0.01 + 0.001 * step,
        "policy/clip_frac_token": 0.005,
        "sync/gap_mean": 2e-7 * (1 + step % 2),
        "sync/gap_max": 1e-6 * (1 + step % 3),
        "train/loss": 1.0 / (1 + step),
        "time/generate": 0.8,
        "time/reward": 0.1,
        "time/learner": 0.5,
        "time/sync": 0.2,
        "time/other": 0.4,
        "time/step": 2.0,
        "curriculum/stage": float(_stage(step)),  # the curriculum logs floats
        "curriculum/accuracy": _accuracy(step),
        **_agent_metrics(step),
    }
    if _eval_step(step):
        record.update({
            "eval/accuracy_greedy": 0.3 + 0.01 * step,
            "eval/accuracy_sampled": 0.25 + 0.01 * step,
            "eval/response_len_mean": 90.0 + 40.0 * _stage(step) + step % 5,
            **_agent_metrics(step, prefix="eval/"),
        })
    if step == 5:
        record["train/loss"] = None  # a NaN loss, written as null
    return record


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("full_run")
    _write_jsonl(run_dir / "metrics.jsonl", [_full_record(s) for s in range(STEPS)])
    _write_jsonl(run_dir / "dft_metrics.jsonl", [{"step": s, "dft/loss": 2.0 / (1 + s)} for s in range(6)])
    return run_dir


@pytest.fixture(scope="module")
def full_report(full_run: Path) -> Path:
    return build_report(full_run)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 600 and height >= 300, (path, width, height)
    assert len(data) > 10_000, (path, len(data))


def test_full_run_writes_every_plot_as_png(full_report: Path, full_run: Path) -> None:
    assert full_report == full_run / "report" / "report.md"
    for plot in PLOTS:
        _assert_png(full_report.parent / plot.file)
    text = full_report.read_text()
    for plot in PLOTS:
        assert f"]({plot.file})" in text
    assert "Not in this run" not in text


def test_summary_numbers_match_the_data(full_report: Path) -> None:
    text = full_report.read_text()
    rewards = [_reward(s) for s in range(STEPS)]
    assert f"| reward/mean, first 5 steps | {fmt(sum(rewards[:5]) / 5)} |" in text
    assert f"| reward/mean, last 5 steps | {fmt(sum(rewards[-5:]) / 5)} |" in text
    assert f"| reward/exact_answer/mean, last 5 steps | {fmt(sum(0.02 * s for s in range(15, 20)) / 5)} |" in text
    best_step = max((s for s in range(STEPS) if _eval_step(s)), key=lambda s: 0.3 + 0.01 * s)
    assert f"| best eval/accuracy_greedy | {fmt(0.3 + 0.01 * best_step)} at step {best_step} |" in text
    assert f"| final sync/gap_mean | {fmt(2e-7 * 2)} (step 19) |" in text
    assert "| final train/loss | 0.05 (step 19) |" in text
    assert "| RL steps | 20 (steps 0 to 19) |" in text
    assert f"| DFT warm-start steps | 6, dft/loss 2 -> {fmt(2.0 / 6)} |" in text
    assert "| mean step time | 2 s |" in text
    assert "| time share: generate | 40.0% (0.8 s) |" in text
    assert "| time share: other | 20.0% (0.4 s) |" in text
    assert "| curriculum stages | 0 at step 0, 1 at step 8, 2 at step 16 |" in text
    for stage, start in enumerate(STAGE_STARTS):
        steps = [s for s in range(STEPS) if _stage(s) == stage]
        mean_reward = fmt(sum(_reward(s) for s in steps) / len(steps))
        mean_length = fmt(sum(_length(s) for s in steps) / len(steps))
        assert f"| {stage} | {start} | {len(steps)} | {mean_reward} | {mean_length} |" in text


def _dominated(p: tuple[float, float], others: list[tuple[float, float]]) -> bool:
    return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in others)


def test_frontier_table_lists_each_stages_pareto_points(full_report: Path) -> None:
    text = full_report.read_text()
    for stage in range(len(STAGE_STARTS)):
        steps = [s for s in range(STEPS) if _stage(s) == stage]
        points = [(_length(s), _accuracy(s)) for s in steps]
        for s, p in zip(steps, points):
            row = f"| train | {stage} | {s} | {fmt(p[0])} | {fmt(p[1])} |"
            assert (row in text) == (not _dominated(p, points)), row
        assert any(f"| eval (greedy) | {stage} | {s} |" in text for s in steps if _eval_step(s))


def _drawn(run_dir: Path, file: str) -> Figure:
    (plot,) = [p for p in PLOTS if p.file == file]
    fig = Figure()
    FigureCanvasAgg(fig)
    assert plot.draw(load_run(run_dir), fig)
    return fig


def test_frontier_plot_draws_one_frontier_per_stage_and_source(full_run: Path) -> None:
    fig = _drawn(full_run, "frontier.png")
    assert [ax.get_title() for ax in fig.axes] == ["Accuracy vs. length: train", "Accuracy vs. length: eval (greedy)"]
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["stage 0 frontier", "stage 1 frontier", "stage 2 frontier"]


def test_stage_changes_are_marked_on_reward_and_length_plots(full_run: Path) -> None:
    for file in ("reward.png", "response_length.png"):
        ax = _drawn(full_run, file).axes[0]
        vertical = sorted({line.get_xdata()[0] for line in ax.get_lines() if line.get_label().startswith("_")})
        assert vertical == [7.5, 15.5], file


def test_minimal_run_still_reports_and_lists_what_is_missing(tmp_path: Path) -> None:
    records = [{"step": s, "reward/mean": 0.1 * s, "time/generate": 1.0, "time/learner": 0.5, "time/step": 2.0}
               for s in range(3)]
    _write_jsonl(tmp_path / "metrics.jsonl", records)
    out = tmp_path / "elsewhere"
    report = build_report(tmp_path, out)
    assert report == out / "report.md"
    _assert_png(out / "reward.png")
    _assert_png(out / "step_time.png")
    assert sorted(p.name for p in out.glob("*.png")) == ["reward.png", "step_time.png"]
    text = report.read_text()
    assert f"| reward/mean, last 5 steps | {fmt(0.1)} |" in text  # fewer than 5 steps: all of them
    assert "| time share: generate | 50.0% (1 s) |" in text
    assert "## Stages" not in text and "frontier" not in text.split("## Not in this run")[0]
    missing = text.split("## Not in this run")[1]
    for title in ("eval accuracy", "clip fraction", "train/inference gap", "loss", "DFT warm-start loss",
                  "curriculum stages", "accuracy-vs-length frontier"):
        assert f"- {title} plot skipped: no " in missing, title
    # A single-turn run lacks nothing by having no episodes: no agent panel, not listed as missing.
    assert "gentic" not in text


def test_agent_table_summarises_the_episode_metrics(full_report: Path, full_run: Path) -> None:
    text = full_report.read_text()
    section = text.split("## Agentic episodes")[1].split("## Plots")[0]
    records = [_full_record(s) for s in range(STEPS)]

    def row(key: str) -> str:
        values = [r[key] for r in records]
        return f"| {key} | {fmt(sum(values[:5]) / 5)} | {fmt(sum(values[-5:]) / 5)} |"

    assert row("agent/tool_calls_mean") + " - |" in section  # 7 calls in 4 episodes, every step
    assert row("agent/valid_tool_calls_mean") + " - |" in section
    errors = sum(r["agent/tool_error"] for r in records)
    assert errors == STEPS // 2 and row("agent/tool_error") + f" {fmt(errors)} in all |" in section
    assert row("agent/parse_errors") + " 10 in all |" in section  # steps 10-19
    assert row("agent/failed_episodes") + " 1 in all |" in section  # the crash at step 7
    assert row("agent/cut_max_turns") + f" {STEPS} in all |" in section
    seconds = sum(r["agent/tool_seconds"] for r in records)
    assert row("agent/tool_seconds") + f" {fmt(seconds)} in all |" in section
    evals = [s for s in range(STEPS) if _eval_step(s)]
    first, last = (_agent_metrics(s)["agent/tool_calls_mean"] for s in (evals[0], evals[-1]))
    assert f"| eval/agent/tool_calls_mean | {fmt(first)} (step {evals[0]}) | {fmt(last)} (step {evals[-1]}) |" in section
    assert "![agentic episodes](agent.png)" in text


def test_agent_panel_draws_what_happened_and_leaves_out_what_never_did(full_run: Path) -> None:
    fig = _drawn(full_run, "agent.png")
    per_episode, problems, limits, seconds = fig.axes
    assert {line.get_label() for line in per_episode.get_lines()} == {
        f"{p}agent/{k}_mean" for p in ("", "eval/") for k in ("turns", "tool_calls", "valid_tool_calls")}
    # Outcomes and cuts that stayed 0 (timeouts, crashes, other limits) draw no line.
    assert [line.get_label() for line in problems.get_lines()] == [
        "agent/parse_errors", "agent/tool_bad_call", "agent/tool_error", "agent/tool_unknown_tool"]
    assert [line.get_label() for line in limits.get_lines()] == ["agent/cut_max_turns", "agent/failed_episodes"]
    assert [line.get_label() for line in seconds.get_lines()] == ["agent/tool_seconds"]


def test_dft_lines_in_metrics_jsonl_are_kept_apart_from_rl_steps(tmp_path: Path) -> None:
    records = [{"step": -2, "dft/loss": 1.5}, {"step": -1, "dft/loss": 1.0},
               {"step": 0, "reward/mean": 0.2}, {"step": 1, "reward/mean": None}, {"step": 2, "reward/mean": 0.4}]
    _write_jsonl(tmp_path / "metrics.jsonl", records)
    run = load_run(tmp_path)
    assert [r["step"] for r in run.dft] == [-2, -1]
    assert [r["step"] for r in run.records] == [0, 1, 2]
    steps, values = run.series("reward/mean")
    assert steps.tolist() == [0, 2] and values.tolist() == [0.2, 0.4]
    assert run.stages == [] and frontier_points(run) == {}


def test_pareto_frontier_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(50):
        points = [FrontierPoint(rng.uniform(0, 100), rng.uniform(0, 1), i, 0) for i in range(rng.randint(1, 30))]
        pairs = [(q.length, q.accuracy) for q in points]
        expected = [p for p in points if not _dominated((p.length, p.accuracy), pairs)]
        assert pareto_frontier(points) == sorted(expected, key=lambda p: p.length)


def test_no_run_folder_report_without_metrics(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        build_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no RL step"):
        build_report(tmp_path)


def _recipe_with_mode(run_dir: Path, mode: str) -> None:
    tracking = {"wandb": {"enabled": True, "mode": mode, "project": "proj", "entity": "team", "tags": []}}
    (run_dir / "recipe.yaml").write_text(json.dumps({"run": {"name": "r"}, "tracking": tracking}))  # JSON is YAML
    (run_dir / RUN_ID_FILE).write_text("abc123\n")


def test_wandb_upload_only_for_online_runs_with_an_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    reason, run_id, _ = wandb_target(tmp_path)
    assert run_id is None and RUN_ID_FILE in reason
    _recipe_with_mode(tmp_path, "offline")
    reason, run_id, _ = wandb_target(tmp_path)
    assert run_id is None and "offline" in reason
    _recipe_with_mode(tmp_path, "online")
    reason, run_id, cfg = wandb_target(tmp_path)
    assert run_id == "abc123" and cfg is not None and cfg.project == "proj"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment wins over the recipe
    reason, run_id, _ = wandb_target(tmp_path)
    assert run_id is None and "disabled" in reason


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []
        self.finished = False

    def log(self, data: dict[str, Any]) -> None:
        self.logged.append(data)

    def finish(self) -> None:
        self.finished = True


def test_upload_resumes_the_run_and_logs_every_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _recipe_with_mode(tmp_path, "online")
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    for name in ("reward.png", "gap.png"):
        (report_dir / name).write_bytes(PNG_MAGIC)
    calls: list[dict[str, Any]] = []
    run = _FakeRun()

    def init(**kwargs: Any) -> _FakeRun:
        calls.append(kwargs)
        return run

    fake = types.SimpleNamespace(init=init, Image=lambda path: ("image", path))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    message = upload_report(tmp_path, report_dir)
    assert message == "uploaded 2 plots to W&B run abc123"
    (call,) = calls
    assert call["id"] == "abc123" and call["resume"] == "must" and call["mode"] == "online"
    assert call["project"] == "proj" and call["entity"] == "team"
    assert run.logged == [{"report/gap": ("image", str(report_dir / "gap.png")),
                           "report/reward": ("image", str(report_dir / "reward.png"))}]
    assert run.finished


def test_cli_report_on_an_empty_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no metrics.jsonl" in lines[0]


def test_cli_report_writes_and_says_upload_was_skipped(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "metrics.jsonl", [{"step": s, "reward/mean": 0.1 * s} for s in range(3)])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'report.md'}" in result.output
    assert "W&B upload skipped: wandb_run_id not found" in result.output
    _assert_png(out / "reward.png")


def test_gap_is_log_scale_unless_a_value_is_zero(full_run: Path, tmp_path: Path) -> None:
    assert _drawn(full_run, "gap.png").axes[0].get_yscale() == "log"
    records = [{"step": s, "reward/mean": 0.1, "sync/gap_mean": 0.0 if s == 1 else 1e-7, "time/sync": None}
               for s in range(3)]
    _write_jsonl(tmp_path / "metrics.jsonl", records)
    assert _drawn(tmp_path, "gap.png").axes[0].get_yscale() == "linear"
    text = build_report(tmp_path).read_text()
    assert "| final sync/gap_mean | 1e-07 (step 2) |" in text
    assert "time share" not in text and "- step time plot skipped: no time/<phase>" in text  # an all-null phase
