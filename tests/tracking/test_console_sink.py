"""Console output: compact lines when not a terminal (CI logs), a progress bar on a terminal."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from ling_rl.config import Recipe
from ling_rl.tracking import ConsoleSink, Tracker

STEP = {"reward/mean": 0.53125, "train/loss": 0.0125, "policy/clip_frac_unit": 0.02, "time/step": 3.4107,
        "batch/responses": 64.0}


def test_not_a_terminal_prints_one_line_every_log_every_steps_and_the_last() -> None:
    out = io.StringIO()
    sink = ConsoleSink(total_steps=7, every=3, console=Console(file=out, width=200))
    for step in range(7):
        sink.log(step, STEP)
    sink.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["step 1/7", "step 4/7", "step 7/7"]
    assert lines[0] == "step 1/7 | reward 0.5312 | loss 0.0125 | clip 0.02 | s/step 3.411"
    assert "\x1b[" not in out.getvalue()  # no colour codes in log files


def test_missing_and_non_finite_key_metrics() -> None:
    out = io.StringIO()
    sink = ConsoleSink(total_steps=2, console=Console(file=out, width=200))
    sink.log(0, {"batch/responses": 64.0})
    sink.log(1, {"train/loss": float("nan")})
    assert out.getvalue().splitlines() == ["step 1/2", "step 2/2 | loss nan"]


def test_terminal_shows_a_progress_bar_from_the_resumed_step() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    sink = ConsoleSink(total_steps=10, first_step=4, console=console)
    sink.log(4, STEP)
    sink.close()
    text = out.getvalue()
    assert "step 5/10" in text and "reward 0.5312" in text and "s/step 3.411" in text
    assert "step 1/10" not in text


def test_tracker_without_progress_bar_prints_lines(tmp_path: Path, make_recipe: Callable[..., Recipe]) -> None:
    out = io.StringIO()
    recipe = make_recipe(steps=4, progress_bar=False, log_every=2)
    with Tracker(recipe, tmp_path, console=Console(file=out, force_terminal=True, width=200)) as tracker:
        for step in range(4):
            tracker.log(step, STEP)
    assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == ["step 1/4", "step 3/4", "step 4/4"]
