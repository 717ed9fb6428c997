"""Where a run's output goes: ling-rl's progress and errors on the console; the roles' output
(vLLM, torch, Ray workers, library warnings) in files of the run folder.

    logs = run_logs.route(run_dir)           # `ling-rl train`, before Ray starts: RUN_DIR/logs
    run_logs.route(run_dir, verbose=True)    # `--verbose`: everything on the console (Ray forwards it)
    run_logs.to_role_log()                   # first line of each role actor's __init__
    run_logs.failure_report(error)           # console lines: the failing role's log tail and path

Routing is a setting of the driver process, like `logging.basicConfig`: `route` records the logs
folder here, `ling_rl.cluster.placement.actor_options` names each actor's file in its environment
(`LING_RL_ROLE_LOG`), and the actor points its stdout and stderr at that file (file descriptors,
so vLLM's C++ and subprocess output go there too). Without `route` (library use, tests) nothing
changes: Ray forwards the actors' output to the driver's console as usual.

    RUN_DIR/logs/driver.log      the driver's library warnings and Ray's driver messages
    RUN_DIR/logs/engine-<i>.log  rollout engine i (vLLM)
    RUN_DIR/logs/learner-<r>.log learner rank r
    RUN_DIR/logs/reward-<k>.log  reward worker k (k counts replacements too)

The files are written by each actor on its own node: on a multi-node cluster they are in the run
folder only where that folder is on a shared file system (otherwise at the same path on the
actor's node).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

ROLE_LOG_ENV = "LING_RL_ROLE_LOG"
"""Environment variable naming the file a role actor writes its output to."""

TAIL_LINES = 20
"""Lines of a failing role's log shown on the console."""

_log_dir: Path | None = None
"""The logs folder of the run this driver routes (None: not routed, Ray forwards role output)."""


def route(run_dir: Path, verbose: bool = False) -> Path | None:
    """Route this driver's run output. Quiet (default): role output to `run_dir/logs/<role>.log`,
    the driver's library warnings and Ray's driver messages to `driver.log` (ling-rl's own
    warnings also on stderr), W&B silent.
    `verbose`: nothing is redirected. Returns the logs folder (None when verbose)."""
    global _log_dir
    if verbose:
        _log_dir = None
        return None
    folder = run_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    _log_dir = folder
    handler = logging.FileHandler(folder / "driver.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Python warnings (FutureWarning, DeprecationWarning, library version notes) become log
    # records of `py.warnings`, which reach the file through the root logger.
    logging.captureWarnings(True)
    # ling-rl's own warnings (a reward worker replaced, failed plugin calls) stay on the console.
    own = logging.StreamHandler(sys.stderr)
    own.setLevel(logging.WARNING)
    own.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger("ling_rl").addHandler(own)
    # W&B prints its banner and run summary on the console; its own files keep them.
    os.environ.setdefault("WANDB_SILENT", "true")
    _transformers_to_root()
    return folder


def _transformers_to_root() -> None:
    """transformers logs through its own stderr handler; hand its records to the root logger."""
    import transformers

    transformers.logging.disable_default_handler()
    transformers.logging.enable_propagation()


def ray_driver_to_file() -> None:
    """When routed: Ray's driver-side messages (its `ray` logger writes to stderr through its own
    handler from import on) go to the root logger, hence `driver.log`. Called once Ray is imported,
    before `ray.init` (which then runs with `configure_logging=False`)."""
    if _log_dir is None:
        return
    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        ray_logger.removeHandler(handler)
    ray_logger.propagate = True


def logs_dir() -> Path | None:
    """The routed logs folder, or None when role output is forwarded to the console."""
    return _log_dir


def role_log_file(name: str) -> Path | None:
    """The file actor `name` (e.g. `engine-0`) writes to, or None when not routed."""
    return None if _log_dir is None else _log_dir / f"{name}.log"


def forward_role_output() -> bool:
    """Whether Ray should forward the actors' output to this driver's console (`log_to_driver`)."""
    return _log_dir is None


def to_role_log() -> None:
    """In a role actor: if its environment names a log file (`LING_RL_ROLE_LOG`), point this
    process's stdout and stderr (fds 1 and 2, inherited by its subprocesses) at it."""
    path = os.environ.get(ROLE_LOG_ENV)
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"[ling-rl] {Path(path).stem}: pid {os.getpid()}, host {os.uname().nodename}", flush=True)


ROLE_OF_ERROR: dict[str, tuple[str, str]] = {
    "RolloutError": ("engine", r"rollout engine (\d+)"),
    "LearnerError": ("learner", r"learner rank (\d+)"),
    "RewardWorkerError": ("reward", r"reward worker (\d+)"),
}
"""Error class name -> (log file prefix of the role it reports, pattern of the actor index in its
message). A role's error names the actor when it knows it; otherwise every log of the role is shown."""


def failure_report(error: BaseException, log_dir: Path | None = None) -> list[str]:
    """Console lines for a role's failure: the last `TAIL_LINES` lines of its log file(s) and
    their paths, so a crash is not hidden in a file. Empty when the error is not a role's or the
    output was not routed."""
    folder = log_dir or _log_dir
    role = ROLE_OF_ERROR.get(type(error).__name__)
    if folder is None or role is None:
        return []
    prefix, index_pattern = role
    files = sorted(folder.glob(f"{prefix}-*.log"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    named = {m.group(1) for m in re.finditer(index_pattern, str(error))}
    if named:
        files = [f for f in files if f.stem.rsplit("-", 1)[1] in named] or files
    lines = []
    for path in files[-3:]:
        tail = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        lines.append(f"last {len(tail)} lines of {path}:")
        lines += [f"  {line}" for line in tail]
    return lines
