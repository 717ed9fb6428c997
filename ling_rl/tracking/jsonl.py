"""`metrics.jsonl` in the run folder: one JSON object per step, the record `ling-rl report` reads."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class JsonlSink:
    """Appends `{"step": ..., "time": ..., <metrics>}` lines, flushed one by one.

    Each line is flushed as soon as it is written, so a killed run loses at most the line being
    written. On resume the lines of steps after `resume_step` are dropped first: those steps run
    again, and the file never holds one step twice. `resume_step=None` is a fresh start.
    """

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        kept = _records_up_to(self.path, resume_step)
        if self.path.exists():
            _rewrite(self.path, kept)
        self.last_step: int | None = kept[-1]["step"] if kept else None
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"{self.path}: step {step} logged after step {self.last_step}; steps must increase")
        record: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        # JSON has no NaN/Infinity; null keeps the file readable by any JSON parser.
        record.update({k: v if math.isfinite(v) else None for k, v in metrics.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        self.last_step = step

    def close(self) -> None:
        self._file.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl` in step order (non-finite values are None).

    A torn last line (the run was killed while writing it) is skipped; any other unreadable line
    is an error naming the file and line.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (is {run_dir} a run folder with tracking.jsonl on?)")
    return read_jsonl(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Step records of one JSONL file; a torn last line is skipped, any other bad line is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number}: expected a JSON object with an integer 'step'")
        records.append(record)
    return records


def _records_up_to(path: Path, resume_step: int | None) -> list[dict[str, Any]]:
    if resume_step is None or not path.is_file():
        return []
    return [r for r in read_jsonl(path) if r["step"] <= resume_step]


def _rewrite(path: Path, records: list[dict[str, Any]]) -> None:
    # Write-then-rename: a kill during truncation leaves either the old or the new file, whole.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in records)
    os.replace(tmp, path)
