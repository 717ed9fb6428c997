"""The one bounded wait on a role's Ray calls: every result, or an error naming who failed.

    results = gather(refs, ["learner rank 0", "learner rank 1"], "train_step", timeout_s=1800, error=LearnerError)
    results = gather(refs, names, "generate", timeout_s=300, error=RolloutError,
                     progress=lambda k: engines[k].progress.remote())

One meaning of `timeout_s` for every role: the most seconds a call may go without progress.
Without a `progress` probe the only progress is the call's start, so the call has one deadline,
`since + timeout_s`, however many of its results arrive before it (a result arriving is not
progress of the others). With a probe, each pending call is asked for a counter of its work
(e.g. an engine's finished steps) every `poll_s`; a changed value restarts that call's clock, so
a long call lives as long as it advances and fails `timeout_s` after it stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def gather(refs: Sequence[Any], names: Sequence[str], what: str, timeout_s: float, error: type[Exception],
           progress: Callable[[int], Any] | None = None, since: float | None = None,
           poll_s: float = 1.0) -> list[Any]:
    """The results of `refs` in order; raises `error` naming `names[k]` and `what` on the first
    call (or probe) whose task raised or whose actor died, or on the pending calls that made no
    progress for `timeout_s` seconds.

    `progress(k)` starts a probe of call k's actor (an `ObjectRef` of a value that changes while
    the call advances); a probe still unanswered is not repeated, and a probe that never answers
    is no progress. `since`: `time.monotonic()` when the calls were made (default: now)."""
    import ray

    if len(names) != len(refs):
        raise ValueError(f"gather {what}: {len(refs)} calls but {len(names)} names")
    start = time.monotonic() if since is None else since
    results: list[Any] = [None] * len(refs)
    pending = {ref: k for k, ref in enumerate(refs)}
    advanced = [start] * len(refs)
    """Per call, when it last made progress (its start, or a changed probe value)."""
    seen: list[Any] = [None] * len(refs)
    """Per call, its last probe value (None: not probed yet; the first answer is the baseline)."""
    probes: dict[Any, int] = {}
    next_probe = start
    while pending:
        now = time.monotonic()
        if progress is not None and now >= next_probe:
            busy = set(probes.values())
            probes.update({progress(k): k for k in pending.values() if k not in busy})
            next_probe = now + poll_s
        stalled = sorted(k for k in pending.values() if now - advanced[k] >= timeout_s)
        if stalled:
            who = ", ".join(names[k] for k in stalled)
            if progress is None:
                raise error(f"{who}: {what} did not finish within {timeout_s:g} s")
            raise error(f"{who}: {what} made no progress for {timeout_s:g} s (last progress value "
                        f"{', '.join(str(seen[k]) for k in stalled)})")
        wake = min(advanced[k] for k in pending.values()) + timeout_s
        if progress is not None:
            wake = min(wake, next_probe)
        ready, _ = ray.wait([*pending, *probes], num_returns=1, timeout=max(wake - now, 0.0))
        for ref in ready:
            if ref in probes:
                k = probes.pop(ref)
                if k not in pending.values():
                    continue  # its call finished meanwhile
                value = _result(ref, names[k], what, error)
                if seen[k] is not None and value != seen[k]:
                    advanced[k] = time.monotonic()
                seen[k] = value
            else:
                k = pending.pop(ref)
                results[k] = _result(ref, names[k], what, error)
    return results


def _result(ref: Any, name: str, what: str, error: type[Exception]) -> Any:
    """`ray.get` of a finished ref; a raised task or a dead actor becomes `error` naming `name`."""
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayActorError as e:
        raise error(f"{name} died during {what}: {type(e).__name__}: {e}") from e
    except RayTaskError as e:
        cause = e.cause if e.cause is not None else e
        lines = str(cause).strip().splitlines()
        raise error(f"{name} failed during {what}: {type(cause).__name__}: {lines[-1] if lines else ''}") from e
    except RayError as e:  # e.g. its worker process crashed or ran out of memory
        raise error(f"{name} failed during {what}: {type(e).__name__}: {e}") from e
