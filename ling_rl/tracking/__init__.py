"""Metric sinks: W&B, metrics.jsonl in the run folder, and the console; step timings per phase.

    timer = PhaseTimer()
    with Tracker(recipe, run_dir, resume_step=None) as tracker:
        with timer.phase("generate"):
            ...
        tracker.log(step, {"reward/mean": 0.53, **timer.as_metrics()})

    read_metrics(run_dir)   # what `ling-rl report` and tests read back

Metric names: see `ling_rl.tracking.metrics`.
"""

from ling_rl.tracking.console import ConsoleSink
from ling_rl.tracking.jsonl import METRICS_FILE, JsonlSink, read_metrics
from ling_rl.tracking.metrics import MetricError, check_metrics
from ling_rl.tracking.timer import PhaseTimer
from ling_rl.tracking.tracker import Tracker
from ling_rl.tracking.wandb_sink import RUN_ID_FILE, WandbSink, wandb_mode

__all__ = [
    "METRICS_FILE",
    "RUN_ID_FILE",
    "ConsoleSink",
    "JsonlSink",
    "MetricError",
    "PhaseTimer",
    "Tracker",
    "WandbSink",
    "check_metrics",
    "read_metrics",
    "wandb_mode",
]
