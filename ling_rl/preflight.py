"""What can be known before Ray, the engines and the learners start, checked first.

    result = preflight(recipe, run_dir)   # PreflightError: one line per problem
    result.complete_step                  # the run folder already holds the final checkpoint
    result.notes                          # what could not be checked here, and why

`ling-rl check` and `ling-rl train` both call it; train only starts its roles when it passes.
Checked: reward plugins resolve; W&B credentials when tracking online; the model folder (a local
folder, a cached hub model, or a tiny model, whose tokenizer is built here as `init-tiny` would);
every data source's rows with the same code and messages as training (`data.train`, the
curriculum stages' `data_mix`, `eval.data`, `dft.data`), prompt lengths against
`rollout.max_prompt_tokens` when a tokenizer is available; with a run folder: the checkpoint to
resume from, and whether the run is already complete. Nothing is downloaded; no Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ling_rl.checkpoint import Checkpointer
from ling_rl.config import Recipe


class PreflightError(ValueError):
    """Problems found before start-up; the message has one line per problem."""


@dataclass
class Preflight:
    complete_step: int | None = None
    """Steps of the checkpoint a run would resume from when it is already >= run.steps (else None)."""

    notes: list[str] = field(default_factory=list)
    """What was not checked, and why (e.g. a hub dataset that is not cached)."""


def preflight(recipe: Recipe, run_dir: Path | None = None, data: bool = True) -> Preflight:
    """Check `recipe` (and `run_dir`, when given) without starting any role; raise `PreflightError`.

    `data=False` (`ling-rl train`): skip the model folder and every data source; `session.start`
    reads them itself before Ray starts, with the same code, so they are not read twice."""
    result = Preflight()
    problems: list[str] = []
    _collect(problems, _rewards, recipe)
    _collect(problems, _wandb, recipe)
    if run_dir is not None:
        result.complete_step = _collect(problems, _complete_step, recipe, run_dir)
    if not data:
        if problems:
            raise PreflightError("\n".join(problems))
        return result
    tokenizer = _collect(problems, _tokenizer, recipe, run_dir, result.notes)
    if tokenizer is None and not problems:
        result.notes.append(f"prompt lengths not checked against rollout.max_prompt_tokens: no tokenizer ({_model_name(recipe)} is not available locally)")
    for check in _data_checks(recipe, tokenizer):
        _collect(problems, check, result.notes)
    if problems:
        raise PreflightError("\n".join(problems))
    return result


def _collect(problems: list[str], check: Callable[..., Any], *args: Any) -> Any:
    """Run one check; a user error becomes a line of `problems` (the other checks still run)."""
    try:
        return check(*args)
    except _checked_errors() as e:
        problems.append(str(e))
    return None


def _checked_errors() -> tuple[type[Exception], ...]:
    # The input errors of ling_rl.errors.USER_ERRORS that these checks raise; that module imports
    # the role modules and with them Ray (~5 s), which check does not need.
    from ling_rl.config import RecipeError
    from ling_rl.curriculum.data import DatasetError
    from ling_rl.models.ling_config import ModelFolderError
    from ling_rl.registry import RegistryError
    from ling_rl.reward.loading import RewardResolutionError
    from ling_rl.checkpoint import CheckpointError

    return (_Problem, RecipeError, DatasetError, ModelFolderError, RegistryError, RewardResolutionError, CheckpointError)


class _Problem(ValueError):
    """A check's finding that has no error type of its own elsewhere."""


def _rewards(recipe: Recipe) -> None:
    from ling_rl.reward.loading import resolve_rewards

    resolve_rewards(recipe.rewards)


def _wandb(recipe: Recipe) -> None:
    from ling_rl.tracking.wandb_sink import credentials_problem

    problem = credentials_problem(recipe.tracking.wandb)
    if problem:
        raise _Problem(problem)


def _complete_step(recipe: Recipe, run_dir: Path) -> int | None:
    ckpt = Checkpointer(run_dir, recipe.checkpoint).to_resume()
    if ckpt is None:
        return None
    step = Checkpointer.step_of(ckpt)
    return step if step >= recipe.run.steps else None


# --- model and tokenizer ---------------------------------------------------------------------------


def _model_name(recipe: Recipe) -> str:
    return f"model.path={recipe.model.path}" if recipe.model.path else f"model.tiny={recipe.model.tiny}"


def _tokenizer(recipe: Recipe, run_dir: Path | None, notes: list[str]) -> Any | None:
    """The tokenizer training will use, after checking the model folder; None when the model is
    a hub name that is not cached (train downloads it)."""
    import transformers

    from ling_rl.models.ling_config import LingConfig

    folder = _model_folder(recipe, run_dir, notes)
    if folder is None:
        return _tiny_tokenizer(recipe) if recipe.model.tiny else None
    LingConfig.from_folder(folder)  # ModelFolderError names the folder
    return transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)


def _model_folder(recipe: Recipe, run_dir: Path | None, notes: list[str]) -> Path | None:
    """The folder `session.prepare_model` would load, when it exists already."""
    if recipe.model.tiny:
        built = run_dir / "model_init" if run_dir is not None else None
        return built if built is not None and (built / "config.json").is_file() else None
    path = str(recipe.model.path)
    if Path(path).exists():
        return Path(path)
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise _Problem(f"model.path: {path} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except LocalEntryNotFoundError:
        notes.append(f"model.path: {path} is not in the Hugging Face cache (train downloads it); model folder not checked")
        return None


def _tiny_tokenizer(recipe: Recipe) -> Any:
    """The tokenizer `init-tiny` writes (deterministic from the seed; ~1 s), without the weights."""
    import transformers

    from ling_rl.models.tiny import EOS, PAD, PRESETS, build_tokenizer

    tok = build_tokenizer(PRESETS[str(recipe.model.tiny)].vocab_size, recipe.model.seed)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


# --- data --------------------------------------------------------------------------------------------


def _data_checks(recipe: Recipe, tokenizer: Any | None) -> list[Callable[[list[str]], None]]:
    """One check per data source training reads, each with the DataConfig training gives it."""
    data, max_tokens = recipe.data, recipe.rollout.max_prompt_tokens
    configs = {data.train: data}
    for stage in recipe.curriculum.stages:
        for name in stage.data_mix or {}:
            configs.setdefault(name, data.model_copy(update={"train": name, "max_rows": None}))
    checks: list[Callable[[list[str]], None]] = [
        lambda notes, cfg=cfg: _prompts(cfg, tokenizer, max_tokens, notes) for cfg in configs.values()]
    if recipe.eval.every > 0 and recipe.eval.data:
        cfg = data.model_copy(update={"train": recipe.eval.data, "shuffle": False, "max_rows": recipe.eval.max_prompts})
        checks.append(lambda notes: _prompts(cfg, tokenizer, max_tokens, notes))
    if recipe.dft.enabled:
        checks.append(lambda notes: _dft(recipe, tokenizer, notes))
    return checks


def _rows(source: str, max_rows: int | None, notes: list[str]) -> list[dict[str, Any]] | None:
    from ling_rl.curriculum.data import NotCachedError, load_rows

    try:
        return load_rows(source, max_rows, local_only=True)
    except NotCachedError as e:
        notes.append(f"{e} (train downloads it); its rows are not checked")
        return None


def _prompts(cfg: Any, tokenizer: Any | None, max_prompt_tokens: int, notes: list[str]) -> None:
    from ling_rl.curriculum.data import PromptSource

    rows = _rows(cfg.train, cfg.max_rows, notes)
    if rows is not None:
        PromptSource(cfg, tokenizer, max_prompt_tokens, rows=rows)  # DatasetError: the same message as train


def _dft(recipe: Recipe, tokenizer: Any | None, notes: list[str]) -> None:
    from ling_rl.dft import DFTData

    source = recipe.dft.data or recipe.data.train
    rows = _rows(source, None, notes)
    if rows is None:
        return
    if tokenizer is None:
        notes.append(f"dft.data: {source} not checked: no tokenizer")
        return
    DFTData(rows, recipe.dft, tokenizer, recipe.data.prompt_key, recipe.data.answer_key, source)  # DatasetError
