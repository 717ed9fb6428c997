"""Start-up: the times logged with the first step, and the CPU engine's one-process environment."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ling_rl.driver.session import Session, since_process_start


def _session(rollout: Any) -> Session:
    none: Any = None
    return Session(recipe=none, run_dir=Path("."), model_dir=Path("."), tokenizer=none, data=none, sources={},
                   curriculum=none, eval_data=none, segmenter=none, rollout=rollout, learner=none, rewards=none,
                   tracker=none, checkpointer=none, start_step=0)


def test_startup_metrics_are_logged_once_with_the_first_generation_and_step() -> None:
    generated_at = time.time()
    s = _session(SimpleNamespace(first_generation_at=generated_at))
    s.startup = {"startup/ray_s": 1.0, "startup/engines_s": 2.0}
    metrics = s.startup_metrics()
    assert set(metrics) == {"startup/ray_s", "startup/engines_s", "startup/first_generation_s", "startup/first_step_s"}
    assert 0 < metrics["startup/first_generation_s"] <= metrics["startup/first_step_s"] <= since_process_start()
    assert s.startup_metrics() == {}  # the next steps carry none


def test_no_generation_yet_leaves_its_time_out() -> None:
    s = _session(SimpleNamespace(first_generation_at=None))
    s.startup = {"startup/ray_s": 1.0}
    assert set(s.startup_metrics()) == {"startup/ray_s", "startup/first_step_s"}


def test_cpu_engine_runs_in_one_process_only_with_unbound_threads(monkeypatch: Any) -> None:
    from ling_rl.rollout import cpu_platform

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    assert cpu_platform.engine_env() == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")  # vLLM applies a binding in its worker process
    assert cpu_platform.engine_env() == {}
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    assert cpu_platform.engine_env() == {}
