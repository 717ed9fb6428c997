"""What can be known before Ray, the engines and the learners start, checked first.

    result = preflight(recipe, run_dir)   # PreflightError: one line per problem
    result.complete_step                  # the run folder already holds the final checkpoint
    result.notes                          # what could not be checked here, and why

`ling-rl check` and `ling-rl train` both call it; train only starts its roles when it passes.
Checked: an engine actor holds its tensor-parallel GPUs; reward plugins resolve; W&B credentials when tracking online; the model folder (a local
folder, a cached hub model, or a tiny model, whose tokenizer is built here as `init-tiny` would);
the `environment:` section (every tool and the factory load and have a JSON schema, the factory's
instance has `reset`; the chat template shows tools and renders tool calls; `tool_parser` is
known or, `auto`, found in the template), every data source's rows with the same code and messages
as training (`data.train`, the curriculum stages' `data_mix`, `eval.data`, `dft.data`), prompt
lengths (with the tool schemas) against `rollout.max_prompt_tokens` when a tokenizer is available;
with a run folder: the checkpoint to resume from, and whether the run is already complete. Nothing
is downloaded; no Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ling_rl.driver.checkpoint import Checkpointer
from ling_rl.config import Recipe


class PreflightError(ValueError):
    """Problems found before start-up; the message has one line per problem."""


@dataclass
class Preflight:
    complete_step: int | None = None
    """Steps of the checkpoint a run would resume from when it is already >= run.steps (else None)."""

    notes: list[str] = field(default_factory=list)
    """What was not checked, and why (e.g. a hub dataset that is not cached)."""

    gpu_memory_gib: float | None = None
    """With `resources`: the memory of one GPU the memory plan uses (`cluster.gpu_memory_gib`, or
    read from the GPUs); None when no role runs on a GPU."""


def preflight(recipe: Recipe, run_dir: Path | None = None, data: bool = True, resources: bool = False) -> Preflight:
    """Check `recipe` (and `run_dir`, when given) without starting any role; raise `PreflightError`.

    `data=False` (`ling-rl train`): skip the model folder and every data source; `session.start`
    reads them itself before Ray starts, with the same code, so they are not read twice.
    `resources=True` (`ling-rl train`): the cluster has the GPUs the roles ask for, and the model
    can be had (a local folder, a cached hub model, or the Hub reachable); with `cluster.address`
    this connects to that Ray cluster (train goes on with the connection); then the memory of one
    GPU (`result.gpu_memory_gib`) for `memory_problems`."""
    result = Preflight()
    problems: list[str] = []
    _collect(problems, _tensor_parallel, recipe)
    if resources:
        before = len(problems)
        _collect(problems, _gpus, recipe)
        if len(problems) == before:  # the GPUs are there: read how much memory one has
            result.gpu_memory_gib = _collect(problems, _gpu_memory_gib, recipe)
        _collect(problems, _model_reachable, recipe)
    _collect(problems, _rewards, recipe)
    _collect(problems, _wandb, recipe)
    if run_dir is not None:
        result.complete_step = _collect(problems, _complete_step, recipe, run_dir)
        _collect(problems, _final_export_target, recipe, run_dir)
    if not data:
        if problems:
            raise PreflightError("\n".join(problems))
        return result
    tokenizer = _collect(problems, _tokenizer, recipe, run_dir, result.notes)
    if tokenizer is None and not problems:
        result.notes.append(f"prompt lengths not checked against rollout.max_prompt_tokens: no tokenizer ({_model_name(recipe)} is not available locally)")
    tools = None
    if recipe.environment is not None:
        environment = _collect(problems, _environment, recipe.environment)
        tools = list(environment.schemas) if environment is not None else None
        _collect(problems, _tool_parser, recipe.environment, tokenizer, result.notes)
        if environment is not None and tokenizer is not None:
            _collect(problems, _chat_template_tools, environment, tokenizer)
    for check in _data_checks(recipe, tokenizer, tools):
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
    from ling_rl.driver.checkpoint import CheckpointError
    from ling_rl.environments.spec import EnvironmentSetupError

    return (_Problem, RecipeError, DatasetError, ModelFolderError, RegistryError, RewardResolutionError, CheckpointError,
            EnvironmentSetupError)


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


def _final_export_target(recipe: Recipe, run_dir: Path) -> None:
    """The run ends by writing `run_dir/hf_final`, which is refused if it holds files that are not
    an export of ours: found here, not after the training, where only learner rank 0 would raise
    while the other ranks wait in the weight gather."""
    if not recipe.checkpoint.export_hf:
        return
    from ling_rl.models.hf_io import check_replaceable
    from ling_rl.models.ling_config import ModelFolderError

    try:
        check_replaceable(run_dir / "hf_final")
    except ModelFolderError as e:
        raise _Problem(f"checkpoint.export_hf: {e}") from None


# --- resources: GPUs, the model, memory ---------------------------------------------------------------


def _gpus(recipe: Recipe) -> None:
    """The GPUs of the roles (actors x cluster.<role>.num_gpus) against what the cluster has: this
    machine's CUDA devices for a local Ray, the cluster's GPU resources with `cluster.address`."""
    c = recipe.cluster
    asks = {"rollout.num_engines x cluster.rollout.num_gpus": recipe.rollout.num_engines * c.rollout.num_gpus,
            "learner.num_ranks x cluster.learner.num_gpus": recipe.learner.num_ranks * c.learner.num_gpus,
            "cluster.reward_workers x cluster.reward.num_gpus": c.reward_workers * c.reward.num_gpus}
    need = sum(asks.values())
    if need == 0:
        return
    if c.address is None:
        import torch

        have, where = float(torch.cuda.device_count()), "this machine has (a local Ray)"
    else:
        have, where = _cluster_gpus(c.address), f"the Ray cluster at cluster.address={c.address} has"
    if have < need:
        parts = ", ".join(f"{k} = {v:g}" for k, v in asks.items() if v)
        raise _Problem(f"cluster: the roles ask for {need:g} GPUs ({parts}) but {where} {have:g}; "
                       "lower those keys (num_gpus: 0 runs a role on CPU) or run on a node with the GPUs")


def _cluster_gpus(address: str) -> float:
    """GPUs of the running Ray cluster at `address`."""
    import ray

    _join(address)
    return float(ray.cluster_resources().get("GPU", 0))


def _join(address: str) -> None:
    """Connect to the Ray cluster at `address` (once). The connection stays: `train`'s `init_ray`
    finds Ray initialized and goes on with it (same address; Ray's INFO lines are kept out of
    preflight's one-line-per-problem output)."""
    import logging

    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise _Problem(f"cluster.address={address}: no running Ray cluster to join ({str(e).splitlines()[0]}); "
                       "start one (`ray start --head`) or remove cluster.address to start a local Ray") from None


def _tensor_parallel(recipe: Recipe) -> None:
    """A GPU engine actor reserves the GPUs of its tensor-parallel workers: with fewer, vLLM would
    start its own Ray placement group for the rest, outside the recipe's placement."""
    tp, gpus = recipe.rollout.tensor_parallel_size, recipe.cluster.rollout.num_gpus
    if 0 < gpus < tp:
        raise _Problem(f"rollout.tensor_parallel_size={tp} but cluster.rollout.num_gpus={gpus:g}: each engine actor "
                       f"must hold its {tp} GPUs (set cluster.rollout.num_gpus: {tp}, or lower tensor_parallel_size)")


GPU_PROBE_TIMEOUT_S = 120.0
"""Bound on reading the GPU memory of a remote cluster: one task per GPU node, each needing a free
GPU, a worker process and `import torch`."""

_GPU_MEMORY_FIX = "set cluster.gpu_memory_gib to the memory one GPU reports (GiB; an 80 GB H100: about 79.2)"


def _gpu_memory_gib(recipe: Recipe) -> float | None:
    """The memory of one GPU for the memory plan: `cluster.gpu_memory_gib` when set; None when no
    role runs on a GPU; else the smallest GPU's memory, read from this machine's CUDA devices for a
    local Ray or from the cluster's GPU nodes with `cluster.address`."""
    from ling_rl.commands.plan import GIB, learner_on_gpu, rollout_on_gpu

    c = recipe.cluster
    if c.gpu_memory_gib is not None:
        return c.gpu_memory_gib
    if not (learner_on_gpu(recipe) or rollout_on_gpu(recipe)):
        return None
    if c.address is not None:
        return _cluster_gpu_memory_gib(c.address)
    import torch

    if not torch.cuda.is_available():
        raise _Problem(f"the memory plan is for GPUs (learner.device / cluster.*.num_gpus) but this machine has no "
                       f"CUDA device to read their memory from; {_GPU_MEMORY_FIX}")
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())) / GIB


def _gpu_total_memory() -> int | None:
    """In a Ray task holding one GPU: its memory in bytes as torch reports it (None: no CUDA device)."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def _cluster_gpu_memory_gib(address: str) -> float:
    """The smallest GPU memory (GiB) over the GPU nodes of the Ray cluster at `address`, each read
    by a task that holds one GPU there (Ray's resources carry GPU counts, not their memory); at
    most `GPU_PROBE_TIMEOUT_S`."""
    import ray
    from ray.exceptions import RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ling_rl.commands.plan import GIB

    _join(address)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    if not nodes:
        raise _Problem(f"cluster.address={address}: no node of the cluster reports GPUs; {_GPU_MEMORY_FIX}")
    probe = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(_gpu_total_memory)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote() for node in nodes]
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=GPU_PROBE_TIMEOUT_S)
    for ref in pending:
        ray.cancel(ref, force=True)
    if pending:
        raise _Problem(f"cluster.address={address}: the GPU memory of {len(pending)} of {len(nodes)} GPU node(s) "
                       f"could not be read within {GPU_PROBE_TIMEOUT_S:.0f} s (no free GPU there?); {_GPU_MEMORY_FIX}")
    try:
        sizes = ray.get(done)
    except RayError as e:
        raise _Problem(f"cluster.address={address}: reading the GPU memory failed ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[-1][:200]}); {_GPU_MEMORY_FIX}") from None
    if any(size is None for size in sizes):
        raise _Problem(f"cluster.address={address}: a node offers Ray GPUs but torch sees no CUDA device in a task "
                       f"holding one; {_GPU_MEMORY_FIX}")
    return min(sizes) / GIB


def _model_reachable(recipe: Recipe) -> None:
    """A local folder, a hub model in the local cache, or the Hub reachable (a HEAD of its
    config.json, 5 s at most): what `session.prepare_model` needs to load or download it."""
    if recipe.model.tiny:
        return
    path = str(recipe.model.path)
    if Path(path).exists():
        return
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise _Problem(f"model.path: {path} does not exist")
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(path, local_files_only=True)
        return
    except LocalEntryNotFoundError:
        pass
    fix = f"download it where there is network (`hf download {path}`) or set model.path to a local folder"
    if constants.HF_HUB_OFFLINE:
        raise _Problem(f"model.path: {path} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {fix}")
    try:
        get_hf_file_metadata(hf_hub_url(path, "config.json"), timeout=5)
    except Exception as e:  # noqa: BLE001 - no network, DNS, 401/404: all mean train cannot download it
        raise _Problem(f"model.path: {path} is not in the Hugging Face cache and the Hub cannot serve it "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); {fix}") from None


def memory_problems(recipe: Recipe, recipe_path: Path | None, gpu_memory_gib: float | None) -> list[str]:
    """`ling-rl plan`'s verdict for `train`: one line per role that does not fit (role, need, key),
    planned for `gpu_memory_gib` per GPU (`Preflight.gpu_memory_gib`; None: no role on a GPU) and
    this machine's host memory. Empty when the model's config.json is not available here (nothing
    to plan with)."""
    from ling_rl.commands.plan import DEFAULT_GPU_MEMORY_GIB, PlanError, model_config, plan_memory
    from ling_rl.config import RecipeError

    try:
        cfg = model_config(recipe, recipe_path)
    except PlanError:
        return []
    gpu = gpu_memory_gib if gpu_memory_gib is not None else DEFAULT_GPU_MEMORY_GIB  # unused: no role on a GPU
    try:
        roles = plan_memory(recipe, cfg, gpu)
    except RecipeError as e:  # e.g. rollout.weight_sync.method: nccl with engines on CPU
        return [str(e)]
    return [r.problem() for r in roles if not r.fits]


# --- model and tokenizer ---------------------------------------------------------------------------


def _model_name(recipe: Recipe) -> str:
    return f"model.path={recipe.model.path}" if recipe.model.path else f"model.tiny={recipe.model.tiny}"


def _tokenizer(recipe: Recipe, run_dir: Path | None, notes: list[str]) -> Any | None:
    """The tokenizer training will use, after checking the model folder; None when the model is
    a hub name that is not cached (train downloads it)."""
    import transformers

    from ling_rl.models.backend import check_recipe_backend

    folder = _model_folder(recipe, run_dir, notes)
    if folder is None:
        if recipe.model.tiny:
            check_recipe_backend(recipe)  # a setting the tiny model's backend lacks names its key
            return _tiny_tokenizer(recipe)
        return None
    # ModelFolderError names the folder; RecipeError a setting the model's backend lacks.
    check_recipe_backend(recipe, folder).check_folder(folder)
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

    from ling_rl.models.tiny import CHAT_TEMPLATE, EOS, PAD, build_tokenizer, tiny_vocab_size

    tok = build_tokenizer(tiny_vocab_size(str(recipe.model.tiny)), recipe.model.seed)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                                chat_template=CHAT_TEMPLATE)


# --- environment (agentic RL) ------------------------------------------------------------------------
# `train` runs the same code in `session.start`, before Ray: here for `ling-rl check`.


def _environment(cfg: Any) -> Any:
    """The `environment:` section resolved (`ResolvedEnvironment`): each tool and the factory
    imported, their JSON schemas made, the factory called once (as a run does); an
    EnvironmentSetupError names the key (`environment.tools[1] 'tools.py:add': ...`)."""
    from ling_rl.environments.loading import resolve_environment

    return resolve_environment(cfg)


def _tool_parser(cfg: Any, tokenizer: Any | None, notes: list[str]) -> None:
    """`environment.tool_parser` names a parser (registered, or the user's by path) or, `auto`,
    the chat template has a known tool-call convention."""
    from ling_rl.environments.parsers import choose_parser

    if tokenizer is None and cfg.tool_parser == "auto":
        notes.append("environment.tool_parser: auto not checked: no tokenizer, so no chat template to read the "
                     "tool-call convention from")
        return
    choose_parser(cfg.tool_parser, getattr(tokenizer, "chat_template", None))


def _chat_template_tools(environment: Any, tokenizer: Any) -> None:
    """The chat template shows the tools in the prompt and renders a tool call and a tool result
    (the episode loop's renderer checks it so at start)."""
    from ling_rl.environments.rendering import ChatRenderer

    ChatRenderer(tokenizer, environment.schemas)


# --- data --------------------------------------------------------------------------------------------


def _data_checks(recipe: Recipe, tokenizer: Any | None,
                 tools: list[dict[str, Any]] | None = None) -> list[Callable[[list[str]], None]]:
    """One check per data source training reads, each with the DataConfig training gives it;
    `tools`: the environment's tool schemas, in every prompt as training renders them."""
    data, max_tokens = recipe.data, recipe.rollout.max_prompt_tokens
    configs = {data.train: data}
    for stage in recipe.curriculum.stages:
        for name in stage.data_mix or {}:
            configs.setdefault(name, data.model_copy(update={"train": name, "max_rows": None}))
    checks: list[Callable[[list[str]], None]] = [
        lambda notes, cfg=cfg: _prompts(cfg, tokenizer, max_tokens, notes, tools) for cfg in configs.values()]
    if recipe.eval.every > 0 and recipe.eval.data:
        cfg = data.model_copy(update={"train": recipe.eval.data, "shuffle": False, "max_rows": recipe.eval.max_prompts})
        checks.append(lambda notes: _prompts(cfg, tokenizer, max_tokens, notes, tools))
    if recipe.dft.enabled:
        checks.append(lambda notes: _dft(recipe, tokenizer, notes, tools))
    return checks


def _rows(source: str, max_rows: int | None, notes: list[str], split: str | None) -> list[dict[str, Any]] | None:
    from ling_rl.curriculum.data import NotCachedError, load_rows

    try:
        return load_rows(source, max_rows, local_only=True, split=split)
    except NotCachedError as e:
        notes.append(f"{e} (train downloads it); its rows are not checked")
        return None


def _prompts(cfg: Any, tokenizer: Any | None, max_prompt_tokens: int, notes: list[str],
             tools: list[dict[str, Any]] | None) -> None:
    from ling_rl.curriculum.data import PromptSource

    rows = _rows(cfg.train, cfg.max_rows, notes, cfg.splits.get(cfg.train))
    if rows is not None:
        PromptSource(cfg, tokenizer, max_prompt_tokens, rows=rows, tools=tools)  # DatasetError: the same message as train


def _dft(recipe: Recipe, tokenizer: Any | None, notes: list[str], tools: list[dict[str, Any]] | None) -> None:
    from ling_rl.curriculum.dft import DFTData

    source = recipe.dft.data or recipe.data.train
    rows = _rows(source, None, notes, recipe.data.splits.get(source))
    if rows is None:
        return
    if tokenizer is None:
        notes.append(f"dft.data: {source} not checked: no tokenizer")
        return
    DFTData(rows, recipe.dft, tokenizer, recipe.data.prompt_key, recipe.data.answer_key, source,  # DatasetError
            chat_template=recipe.data.chat_template, system_prompt=recipe.data.system_prompt, tool_schemas=tools)
