"""The tracker refuses metrics it cannot log, naming the key, before any sink writes the step."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ling_rl.config import Recipe
from ling_rl.tracking import MetricError, Tracker, check_metrics, read_metrics


def test_real_numbers_pass_as_floats() -> None:
    out = check_metrics({"a/int": 3, "a/float": 0.5, "a/np": np.float32(1.5), "a/npint": np.int64(7),
                         "a/nan": math.nan})
    assert out["a/int"] == 3.0 and out["a/np"] == 1.5 and out["a/npint"] == 7.0 and math.isnan(out["a/nan"])
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize(("metrics", "message"), [
    ({"reward/mean": "0.5"}, r"metric 'reward/mean': expected a real number, got str"),
    ({"reward/mean": None}, r"metric 'reward/mean': expected a real number, got NoneType"),
    ({"train/loss": np.array(0.25)}, r"metric 'train/loss': .*ndarray.*call \.item\(\)"),
    ({"reward/mean": [1.0]}, r"metric 'reward/mean': expected a real number, got list"),
    ({"step": 1.0}, r"metric 'step': the name is reserved"),
    ({"time": 1.0}, r"metric 'time': the name is reserved"),
    ({"_runtime": 1.0}, r"metric '_runtime': the name is reserved"),
    ({"": 1.0}, r"metric key '': keys are non-empty strings"),
    ({3: 1.0}, r"metric key 3: keys are non-empty strings"),
])
def test_bad_metrics_are_refused_with_the_key(metrics: dict, message: str) -> None:
    with pytest.raises(MetricError, match=message):
        check_metrics(metrics)


def test_tracker_refuses_before_writing(tmp_path: Path, make_recipe: Callable[..., Recipe]) -> None:
    with Tracker(make_recipe(progress_bar=False), tmp_path) as tracker:
        tracker.log(0, {"reward/mean": 0.5})
        with pytest.raises(MetricError, match="'reward/breakdown'"):
            tracker.log(1, {"reward/mean": 0.5, "reward/breakdown": {"math": 1.0}})
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            tracker.log(-1, {"reward/mean": 0.5})
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            tracker.log(1.0, {"reward/mean": 0.5})  # type: ignore[arg-type]
        tracker.log(1, {"reward/mean": 0.75})
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(tmp_path)] == [(0, 0.5), (1, 0.75)]
