"""Console progress: a rich progress bar on a terminal, one compact line per logged step otherwise."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

KEY_METRICS: tuple[tuple[str, str], ...] = (
    ("reward/mean", "reward"),
    ("train/loss", "loss"),
    ("policy/clip_frac_unit", "clip"),
    ("train/grad_norm", "gnorm"),
    ("sync/gap_mean", "gap"),
    ("time/step", "s/step"),
)
"""(metric key, console label) shown when the step has the key; the rest go to JSONL and W&B."""


def summarize(metrics: dict[str, float]) -> str:
    """`reward 0.531 | loss 0.0123 | s/step 3.41` from the key metrics present in `metrics`."""
    parts = []
    for key, label in KEY_METRICS:
        if key in metrics:
            value = metrics[key]
            parts.append(f"{label} {value:.4g}" if math.isfinite(value) else f"{label} {value}")
    return " | ".join(parts)


class ConsoleSink:
    """Shows progress over `total_steps`.

    On a terminal with `bar=True`: a live progress bar whose text is the latest key metrics.
    Otherwise (CI logs, files, `bar=False`): one line `step N/T | reward ... | s/step ...` every
    `every` steps and at the last step, which stays readable in a log file.
    """

    def __init__(self, total_steps: int, every: int = 1, first_step: int = 0, bar: bool = True,
                 console: Console | None = None) -> None:
        self.console = console or Console()
        self._total = total_steps
        self._every = every
        self._progress: Progress | None = None
        if bar and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[summary]}"),
                console=self.console,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=first_step, summary="")
            self._progress.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        summary = summarize(metrics)
        if self._progress is not None:
            self._progress.update(self._task, completed=step + 1, summary=summary)
        elif step % self._every == 0 or step == self._total - 1:
            line = f"step {step + 1}/{self._total}" + (f" | {summary}" if summary else "")
            # Plain print: no markup or highlighting codes in log files.
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
