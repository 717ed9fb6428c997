"""`ling-rl report RUN_A RUN_B`: two runs' frontiers on one figure, the comparison table, the
per-set (OOD) eval keys in a single run's report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ling_rl.commands.cli import app
from ling_rl.tracking.compare import build_comparison, comparison_rows, eval_points
from ling_rl.tracking.report import build_report, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(folder: Path, name: str, lengths: list[float], accuracies: list[float]) -> Path:
    """A run folder whose evals (steps 0, 10, 20, ...) have these greedy lengths and accuracies."""
    folder.mkdir(parents=True)
    records: list[dict[str, Any]] = []
    for step in range(10 * (len(lengths) - 1) + 1):
        record: dict[str, Any] = {"step": step, "reward/mean": 0.1 * step, "curriculum/stage": float(step >= 10)}
        if step % 10 == 0:
            i = step // 10
            record.update({"eval/accuracy_greedy": accuracies[i], "eval/response_len_greedy": lengths[i],
                           "eval/ood/accuracy_greedy": accuracies[i] / 2, "eval/units_greedy": lengths[i] / 10})
        records.append(record)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "recipe.yaml").write_text(f"run:\n  name: {name}\n")
    return folder


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    on = _run(tmp_path / "evo_on", "quickstart", [80.0, 70.0, 50.0], [0.4, 0.7, 0.72])
    off = _run(tmp_path / "evo_off", "quickstart", [80.0, 82.0, 84.0], [0.4, 0.69, 0.73])
    return on, off


def test_eval_points_pair_greedy_length_and_accuracy(two_runs) -> None:
    points = eval_points(load_run(two_runs[0]))
    assert [(p.step, p.length, p.accuracy) for p in points] == [(0, 80.0, 0.4), (10, 70.0, 0.7), (20, 50.0, 0.72)]


def test_table_has_first_and_final_accuracy_per_set_and_the_length_change(two_runs) -> None:
    rows = comparison_rows([load_run(d) for d in two_runs])
    header, on, off = rows
    assert header[1:3] == ["eval/accuracy_greedy: first -> final", "eval/ood/accuracy_greedy: first -> final"]
    assert on[1:] == ["0.4 -> 0.72", "0.2 -> 0.36", "50", "+0.0%", "5"]
    assert off[1:] == ["0.4 -> 0.73", "0.2 -> 0.365", "84", "+68.0%", "8.4"]


def test_comparison_writes_both_figures_and_names_runs_by_folder(two_runs, tmp_path: Path) -> None:
    md = build_comparison(list(two_runs), tmp_path / "cmp")
    text = md.read_text()
    for file in ("compare_frontier.png", "compare_accuracy.png"):
        assert (tmp_path / "cmp" / file).read_bytes()[:8] == PNG_MAGIC
        assert file in text
    # Both runs are named "quickstart": the table tells them apart by folder.
    assert f"| {two_runs[0]} |" in text and f"| {two_runs[1]} |" in text
    with pytest.raises(ValueError, match="at least two"):
        build_comparison([two_runs[0]], tmp_path / "one")


def test_single_report_lists_each_eval_sets_start_and_end(two_runs) -> None:
    text = build_report(two_runs[0]).read_text()
    assert "| eval/accuracy_greedy: first eval -> final | 0.4 (step 0) -> 0.72 (step 20), +32.0 points |" in text
    assert "| eval/ood/accuracy_greedy: first eval -> final | 0.2 (step 0) -> 0.36 (step 20), +16.0 points |" in text
    assert "| eval/units_greedy: first eval -> final | 8 -> 5 |" in text


def test_cli_report_with_two_runs(two_runs) -> None:
    result = CliRunner().invoke(app, ["report", str(two_runs[0]), str(two_runs[1])])
    assert result.exit_code == 0, result.output
    assert (two_runs[0] / "report" / "compare" / "compare.md").is_file()
    assert (two_runs[1] / "report" / "report.md").is_file()


def test_time_share_of_a_phase_on_some_steps_is_per_step_over_all_steps(tmp_path: Path) -> None:
    """An eval every 3rd step taking 6 s adds 2 s per step, not 6 (nor a share above 100%)."""
    folder = tmp_path / "run"
    folder.mkdir()
    records = [{"step": s, "time/step": 4.0, "time/generate": 2.0, **({"time/eval": 6.0} if s == 2 else {})}
               for s in range(3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = build_report(folder).read_text()
    assert "| time share: eval | 50.0% (2 s) |" in text and "| time share: generate | 50.0% (2 s) |" in text
