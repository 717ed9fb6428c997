"""Weights & Biases: one W&B run per run folder, resumed under the same id after a restart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ling_rl.tracking.config import WandbConfig

if TYPE_CHECKING:
    from ling_rl.config import Recipe

RUN_ID_FILE = "wandb_run_id"


def wandb_mode(cfg: WandbConfig) -> str:
    """The mode W&B runs in: `WANDB_MODE` from the environment when set, else the recipe's.

    The environment wins so that CI or an air-gapped node can force `offline` (or `disabled`)
    without editing recipes; `wandb.init(mode=...)` alone would override the variable.
    """
    if not cfg.enabled:
        return "disabled"
    return os.environ.get("WANDB_MODE") or cfg.mode


def credentials_problem(cfg: WandbConfig) -> str | None:
    """Why an online W&B run could not start, or None: the API key is looked up the way
    `wandb.init` does (WANDB_API_KEY, ~/.netrc, `wandb login` settings), without prompting,
    contacting the server or starting W&B's service."""
    if wandb_mode(cfg) != "online":
        return None
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib.wbauth.authenticate import authenticate_session

    host = wandb_setup.singleton().settings.base_url
    hint = "run `wandb login` or set WANDB_API_KEY, or set tracking.wandb.mode=offline (or WANDB_MODE=offline)"
    try:
        found = authenticate_session(host=host, source="ling-rl", prompt=False, update_session=False)
    except AuthenticationError as e:
        return f"tracking.wandb.mode=online: {e}; {hint}"
    if found is None:
        return f"tracking.wandb.mode=online but no W&B API key is configured for {host}; {hint}"
    return None


class WandbSink:
    """Logs each step's metrics to a W&B run named after the recipe, with the recipe as config.

    The run id lives in `run_dir/wandb_run_id`. A resumed run (`resume=True`) reuses it, so W&B
    shows one run; a fresh start draws a new id. W&B's own files go to `run_dir/wandb/`.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, mode: str, resume: bool, every: int = 1) -> None:
        import wandb

        cfg = recipe.tracking.wandb
        id_file = Path(run_dir) / RUN_ID_FILE
        # None lets W&B draw a fresh id; a resumed run reuses the one persisted by its first start.
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        self._every = every
        self._last = recipe.run.steps - 1
        # This run owns its W&B service. One inherited through WANDB_SERVICE from the process that
        # started the driver (a notebook, a test runner that used W&B) outlives a killed driver
        # and still holds its run id when the resumed run asks for it ("run ID ... is in use").
        os.environ.pop("WANDB_SERVICE", None)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=recipe.run.name,
            tags=list(cfg.tags),
            mode=mode,
            config=recipe.model_dump(mode="json"),
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            # This tracker owns its run; never finish or reuse a run someone else started.
            reinit="create_new",
        )
        id_file.write_text(f"{self.run.id}\n")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if step % self._every == 0 or step == self._last:
            # W&B's step is the RL step: after a resume, rows W&B already holds (steps that ran
            # again) are not duplicated.
            self.run.log(dict(metrics), step=step)

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)

    @property
    def run_id(self) -> str:
        return str(self.run.id)

