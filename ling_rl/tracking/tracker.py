"""The one object the driver loop logs through; it fans each step out to the enabled sinks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from rich.console import Console

from ling_rl.tracking.console import ConsoleSink
from ling_rl.tracking.jsonl import JsonlSink
from ling_rl.tracking.metrics import check_metrics
from ling_rl.tracking.wandb_sink import WandbSink, wandb_mode

if TYPE_CHECKING:
    from ling_rl.config import Recipe


class Sink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...


class Tracker:
    """Validates each step's metrics once and hands them to every sink of `recipe.tracking`.

        with Tracker(recipe, run_dir, resume_step=None) as tracker:
            tracker.log(step, {"reward/mean": 0.5, **timer.as_metrics()})

    Sinks: metrics.jsonl (`tracking.jsonl`), W&B (`tracking.wandb`, unless disabled) and the
    console (always; a progress bar when `tracking.progress_bar` and stdout is a terminal).
    `resume_step` is the last step whose metrics are kept when resuming from a checkpoint
    (None: a fresh run). A bad metric raises `MetricError` before any sink has written the step.
    """

    def __init__(self, recipe: Recipe, run_dir: str | Path, resume_step: int | None = None,
                 console: Console | None = None) -> None:
        cfg = recipe.tracking
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl: JsonlSink | None = None
        self.wandb: WandbSink | None = None
        self._closed = False
        first_step = 0 if resume_step is None else resume_step + 1
        # Console first and W&B last: if W&B fails to start, the sinks already open are closed.
        self.console = ConsoleSink(recipe.run.steps, cfg.log_every, first_step, cfg.progress_bar, console)
        self._sinks: list[Sink] = [self.console]
        try:
            if cfg.jsonl:
                self.jsonl = JsonlSink(run_dir, resume_step)
                self._sinks.append(self.jsonl)
            mode = wandb_mode(cfg.wandb)
            if mode != "disabled":
                self.wandb = WandbSink(recipe, run_dir, mode, resume=resume_step is not None, every=cfg.log_every)
                self._sinks.append(self.wandb)
        except BaseException:
            self.close()
            raise

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log the metrics of RL step `step` (0-based, increasing) to every sink."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        clean = check_metrics(metrics)
        for sink in self._sinks:
            sink.log(step, clean)

    def close(self, exit_code: int = 0) -> None:
        """Finish every sink (idempotent); a non-zero `exit_code` marks the W&B run failed."""
        if self._closed:
            return
        self._closed = True
        # Every sink gets closed even if one fails; the first failure is raised afterwards.
        closers = [self.console.close]
        if self.jsonl is not None:
            closers.append(self.jsonl.close)
        if self.wandb is not None:
            wandb_sink = self.wandb
            closers.append(lambda: wandb_sink.close(exit_code))
        error: BaseException | None = None
        for close in closers:
            try:
                close()
            except BaseException as e:  # noqa: BLE001 - re-raised below after the others closed
                error = error or e
        if error is not None:
            raise error

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(exit_code=0 if exc_type is None else 1)
