"""W&B for real, offline: run identity and config from the recipe, history, resume under one id."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from wandb_files import finished_records, history_rows, offline_runs

from ling_rl.config import Recipe
from ling_rl.tracking import RUN_ID_FILE, Tracker, read_metrics, wandb_mode

pytestmark = pytest.mark.usefixtures("wandb_home")


def _recipe(make_recipe: Callable[..., Recipe], steps: int = 4, **tracking: object) -> Recipe:
    wandb = {"mode": "offline", "project": "ling-rl-tests", "tags": ["ci", "tiny"]}
    return make_recipe(steps=steps, name="wb-run", progress_bar=False, wandb=wandb, **tracking)


def _run(recipe: Recipe, run_dir: Path, steps: range, resume_step: int | None = None) -> str:
    with Tracker(recipe, run_dir, resume_step, console=Console(file=io.StringIO())) as tracker:
        assert tracker.wandb is not None
        for step in steps:
            tracker.log(step, {"reward/mean": step / 4, "train/loss": float("nan") if step == 1 else 1.0})
        return tracker.wandb.run_id


def _next_second() -> None:
    """W&B names an offline folder by its start second; a real restart takes far longer than this."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def _the_run_record(records: list) -> object:
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    return run


def test_offline_run_has_identity_config_and_history(tmp_path: Path, make_recipe: Callable[..., Recipe]) -> None:
    recipe = _recipe(make_recipe)
    run_id = _run(recipe, tmp_path, range(4))
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == run_id
    (wandb_file,) = offline_runs(tmp_path, run_id)
    records = finished_records(wandb_file)
    run = _the_run_record(records)
    assert (run.run_id, run.project, run.display_name, list(run.tags)) == (run_id, "ling-rl-tests", "wb-run", ["ci", "tiny"])
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["run"]["name"] == "wb-run" and config["run"]["steps"] == 4
    assert config["tracking"]["wandb"]["tags"] == ["ci", "tiny"] and config["rewards"][0]["name"] == "exact_answer"
    rows = history_rows(records)
    assert [(row["_step"], row["reward/mean"]) for row in rows] == [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75)]
    assert math.isnan(rows[1]["train/loss"]) and rows[0]["train/loss"] == 1.0  # W&B keeps NaN
    # The same steps also went to metrics.jsonl.
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]


def test_resume_continues_the_same_run_id(tmp_path: Path, make_recipe: Callable[..., Recipe]) -> None:
    recipe = _recipe(make_recipe)
    first = _run(recipe, tmp_path, range(3))  # "killed" after step 2; the checkpoint holds step 1
    _next_second()
    resumed = _run(recipe, tmp_path, range(2, 4), resume_step=1)
    assert resumed == first
    files = offline_runs(tmp_path, first)
    assert len(files) == 2  # one offline folder per process start, both under the one run id
    records = finished_records(files[1])
    assert _the_run_record(records).resume
    assert [row["_step"] for row in history_rows(records)] == [2, 3]
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]


def test_fresh_start_draws_a_new_run_id(tmp_path: Path, make_recipe: Callable[..., Recipe]) -> None:
    recipe = _recipe(make_recipe)
    first = _run(recipe, tmp_path, range(1))
    second = _run(recipe, tmp_path, range(1), resume_step=None)
    assert second != first and (tmp_path / RUN_ID_FILE).read_text().strip() == second


def test_log_every_and_failed_exit(tmp_path: Path, make_recipe: Callable[..., Recipe]) -> None:
    recipe = _recipe(make_recipe, steps=6, log_every=2)
    with pytest.raises(RuntimeError, match="learner died"):
        with Tracker(recipe, tmp_path, console=Console(file=io.StringIO())) as tracker:
            for step in range(6):
                tracker.log(step, {"reward/mean": 1.0})
            raise RuntimeError("learner died")
    assert tracker.wandb is not None
    records = finished_records(offline_runs(tmp_path, tracker.wandb.run_id)[0])
    assert [row["_step"] for row in history_rows(records)] == [0, 2, 4, 5]
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 1
    assert len(read_metrics(tmp_path)) == 6  # the JSONL file keeps every step


def test_disabled_wandb_writes_nothing(tmp_path: Path, make_recipe: Callable[..., Recipe],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    off = make_recipe(progress_bar=False, wandb={"enabled": False, "mode": "offline"})
    with Tracker(off, tmp_path / "a", console=Console(file=io.StringIO())) as tracker:
        tracker.log(0, {"reward/mean": 1.0})
        assert tracker.wandb is None
    assert not (tmp_path / "a" / "wandb").exists() and not (tmp_path / "a" / RUN_ID_FILE).exists()

    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment wins over the recipe
    online = make_recipe(progress_bar=False, wandb={"mode": "online"})
    assert wandb_mode(online.tracking.wandb) == "disabled"
    with Tracker(online, tmp_path / "b", console=Console(file=io.StringIO())) as tracker:
        assert tracker.wandb is None
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(online.tracking.wandb) == "online"


def test_a_run_never_uses_a_wandb_service_it_inherited(tmp_path: Path, make_recipe: Callable[..., Recipe]) -> None:
    """A driver started by a process that used W&B inherits its WANDB_SERVICE; the run must start
    its own service (the inherited one would still hold a killed run's id on resume). Here the
    inherited value names no live service: W&B fails to start if the sink uses it."""
    import os
    import subprocess
    import sys

    recipe = _recipe(make_recipe)
    code = ("import sys; from pathlib import Path; from ling_rl.config import Recipe; "
            "from ling_rl.tracking.wandb_sink import WandbSink; "
            "sink = WandbSink(Recipe.model_validate_json(sys.argv[1]), Path(sys.argv[2]), 'offline', resume=False); "
            "sink.run.finish(); print('started')")
    env = dict(os.environ, WANDB_SERVICE="2-99999-unix-/tmp/no-such-wandb-service.sock")
    proc = subprocess.run([sys.executable, "-c", code, recipe.model_dump_json(), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "started" in proc.stdout, proc.stderr[-2000:]
