"""Ray options of one role actor: its resources (node placement included) and its environment.

    options = actor_options(recipe.cluster.rollout, "engine-0", {"OMP_NUM_THREADS": "1"})
    engine = ray.remote(RolloutEngine).options(**options).remote(...)

Node placement uses Ray's custom resources: a node started with
`ray start --resources='{"node_learner": 2}'` offers two units of `node_learner`, and a role with
`cluster.learner.resources: {node_learner: 1}` asks one unit per actor, so its actors run only
there. Where the driver routes role output to files (`ling_rl.run_logs.route`), the actor's
environment names its log file (`<name>.log` in the run's logs folder).
"""

from __future__ import annotations

from typing import Any

from ling_rl import run_logs
from ling_rl.cluster.config import RoleResources


def actor_options(res: RoleResources, name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of `ActorClass.options()` for actor `name` (`engine-0`, `learner-1`,
    `reward-0`) of a role with resources `res`, and environment variables `env`."""
    env_vars = dict(env or {})
    log_file = run_logs.role_log_file(name)
    if log_file is not None:
        env_vars[run_logs.ROLE_LOG_ENV] = str(log_file)
    options: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
    if res.resources:
        options["resources"] = dict(res.resources)
    if env_vars:
        options["runtime_env"] = {"env_vars": env_vars}
    return options
