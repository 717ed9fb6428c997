"""Starting and stopping the roles of a run: Ray, rollout engines, learner ranks, reward workers,
tracker, data and checkpoints. `loop.py` drives them."""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ling_rl.driver.checkpoint import Checkpointer
from ling_rl.config import Recipe, RecipeError
from ling_rl.curriculum.data import PromptSource
from ling_rl.curriculum.evo_cot import Curriculum
from ling_rl.learner.sections import BehaviourPolicy, LearnerSections


def learner_sections(recipe: Recipe) -> LearnerSections:
    """The sections of `recipe` a learner rank reads (roles get their sections, not the recipe)."""
    r = recipe.rollout
    behaviour = BehaviourPolicy(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                routing_replay=r.routing_replay, max_staleness=r.max_staleness)
    return LearnerSections(learner=recipe.learner, algorithm=recipe.algorithm, model=recipe.model, run=recipe.run,
                           rollout=behaviour)


@dataclass
class Session:
    recipe: Recipe
    run_dir: Path
    model_dir: Path
    tokenizer: Any
    data: PromptSource
    sources: dict[str, PromptSource]
    """Training prompt sources by dataset (curriculum data mixes), `data.train` included."""
    curriculum: Curriculum
    eval_data: PromptSource | None
    segmenter: Any
    rollout: Any
    learner: Any
    rewards: Any
    tracker: Any
    checkpointer: Checkpointer
    start_step: int
    dft_data: Any = None
    """The DFT warm start's examples (`DFTData`), read at start when the run begins with DFT."""
    last_reward_metrics: dict[str, float] = field(default_factory=dict)
    step_groups: tuple[int, int] | None = None
    """(step, groups generated so far in it): refill rounds continue the group numbering."""
    skipped_steps: int = 0
    """RL steps whose batch carried no signal and was not trained on (kept across resumes)."""
    async_state: dict[str, Any] | None = None
    """The asynchronous driver's in-flight buffer (`InflightBuffer.state_dict`): saved in each
    checkpoint's driver state when set, read back on resume (None in synchronous runs)."""
    weight_sync: Any = None
    """The `WeightSync` method moving the learner's weights into the engines (ling_rl/weightsync/methods.py)."""
    last_sync_metrics: dict[str, float] = field(default_factory=dict)
    """`sync/gather_s`, `sync/transfer_s`, `sync/load_s` of the latest sync (logged with its step)."""
    startup: dict[str, float] = field(default_factory=dict)
    """Seconds from this process's start to each start-up phase (Ray up, each role ready, roles
    set up); logged once, with the first step this process runs (`startup_metrics`)."""
    environment: Any = None
    """The `environment:` section resolved (`ResolvedEnvironment`), or None (single-turn RL)."""
    episodes: Any = None
    """The `EpisodeRunner` of multi-turn runs (ling_rl/rollout/episodes.py), or None."""

    @property
    def tool_schemas(self) -> list[dict[str, Any]] | None:
        """The JSON schemas every prompt shows (None without an environment)."""
        return list(self.environment.schemas) if self.environment is not None else None

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def sync_weights(self, version: int) -> dict[str, float]:
        """Learner -> rollout engines, by the method `rollout.weight_sync.method` chose; returns
        (and keeps in `last_sync_metrics`) the time of its gather / transfer / load phases."""
        self.last_sync_metrics = self.weight_sync.sync(version)
        return self.last_sync_metrics

    def startup_metrics(self) -> dict[str, float]:
        """The start-up times, plus the first generation and now (the end of the first step), in
        seconds since the process started; empty after the first call (they are logged once)."""
        if not self.startup:
            return {}
        metrics = dict(self.startup)
        if self.rollout is not None and self.rollout.first_generation_at is not None:
            metrics["startup/first_generation_s"] = self.rollout.first_generation_at - process_start_time()
        metrics["startup/first_step_s"] = since_process_start()
        self.startup = {}
        return metrics

    def source(self, name: str) -> PromptSource:
        if name not in self.sources:
            cfg = self.recipe.data.model_copy(update={"train": name, "max_rows": None})
            self.sources[name] = PromptSource(cfg, self.tokenizer, self.recipe.rollout.max_prompt_tokens,
                                              tools=self.tool_schemas)
        return self.sources[name]

    def next_prompts(self, n: int, step: int) -> list[Any]:
        """n prompts drawn by the curriculum's data mix, annotated with pass rate and length alpha."""
        names = self.curriculum.choose_sources(n, random.Random(self.recipe.data.seed * 1_000_003 + step))
        samples = []
        for name in dict.fromkeys(names):
            samples += self.source(name).next_batch(names.count(name))
        return self.curriculum.annotate(samples)

    def save(self, step: int) -> Path:
        return self.checkpointer.save(step, self.learner, {
            "data": {name: src.state() for name, src in self.sources.items()},
            "curriculum": self.curriculum.state_dict(),
            "model_dir": str(self.model_dir),
            "skipped_steps": self.skipped_steps,
            **({"async": self.async_state} if self.async_state is not None else {}),
        })

    def close(self) -> None:
        for role in (self.rollout, self.learner, self.rewards):
            if role is not None:
                role.shutdown()
        if self.episodes is not None:
            self.episodes.close()
        if self.tracker is not None:
            self.tracker.close()
        if self.weight_sync is not None:
            self.weight_sync.close()


def process_start_time() -> float:
    """When this process started (`time.time()` scale): start-up is measured from `ling-rl train`
    itself, its imports included. On Linux from the kernel's start time of the process (clock ticks
    since boot) against the boot clock, to ~10 ms: psutil's `create_time` counts from a boot time
    rounded to the second."""
    import os

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, AttributeError, IndexError, ValueError):  # not Linux
        import psutil

        return float(psutil.Process().create_time())


def since_process_start() -> float:
    return time.time() - process_start_time()


def prepare_model(recipe: Recipe, run_dir: Path) -> Path:
    """The folder the roles load: `model.path`, or a tiny model built once into the run folder."""
    from ling_rl.models.backend import check_recipe_backend

    if recipe.model.path:
        folder = Path(recipe.model.path)
        if not folder.exists() and recipe.model.path.count("/") == 1:
            from huggingface_hub import snapshot_download  # a hub name: needs network, cached after

            folder = Path(snapshot_download(recipe.model.path))
        # Fail early, with the folder named: its backend (Ling or transformers), the features the
        # recipe asks of it, its config.
        check_recipe_backend(recipe, folder).check_folder(folder)
        return folder
    from ling_rl.models.tiny import init_tiny

    check_recipe_backend(recipe)  # before building anything
    folder = run_dir / "model_init"
    if not (folder / "config.json").is_file():
        init_tiny(folder, preset=recipe.model.tiny or "tiny", seed=recipe.model.seed)
    return folder


def start(recipe: Recipe, run_dir: Path) -> Session:
    import transformers

    from ling_rl.algorithms import Segmenter, needs_segmentation, token_bytes_from_tokenizer
    from ling_rl.cluster.ray_init import init_ray
    from ling_rl.driver.evaluation import eval_prompts
    from ling_rl.learner.group import LearnerGroup
    from ling_rl.reward.pool import RewardPool
    from ling_rl.rollout.group import RolloutGroup
    from ling_rl.weightsync.methods import SYNC_METHODS, choose_method, sync_tag
    from ling_rl.tracking import Tracker

    run_dir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(run_dir, recipe.checkpoint)
    resume_from = checkpointer.to_resume()
    # Before anything is written: checkpoints after the starting point belong to an abandoned
    # trajectory (resume: never, or an older checkpoint), and must not be resumed or overwritten.
    superseded = checkpointer.set_aside(resume_from)
    if superseded is not None:
        import logging

        logging.getLogger(__name__).warning("this run does not continue the run folder's latest checkpoint: the later "
                                            "checkpoints, metrics.jsonl and recipe.yaml are kept in %s", superseded)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    model_dir = prepare_model(recipe, run_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    environment = resolve_environment(recipe)
    tools = list(environment.schemas) if environment is not None else None
    data = PromptSource(recipe.data, tokenizer, recipe.rollout.max_prompt_tokens, tools=tools)
    curriculum = Curriculum(recipe.curriculum, recipe.rollout.max_response_tokens, train_source=recipe.data.train)
    eval_data = eval_prompts(recipe, tokenizer, tools) if recipe.eval.every > 0 else None
    segmenter = None
    if needs_segmentation(recipe.algorithm.loss):
        segmenter = Segmenter(token_bytes_from_tokenizer(tokenizer), recipe.algorithm.segmentation)
    session = Session(recipe=recipe, run_dir=run_dir, model_dir=model_dir, tokenizer=tokenizer, data=data,
                      sources={recipe.data.train: data}, curriculum=curriculum, eval_data=eval_data,
                      segmenter=segmenter, rollout=None, learner=None, rewards=None, tracker=None,
                      checkpointer=checkpointer, start_step=0, environment=environment)
    if environment is not None:
        from ling_rl.rollout.episodes import EpisodeRunner

        session.episodes = EpisodeRunner(environment, recipe.environment, tokenizer, recipe.rollout.max_prompt_tokens,
                                         log_path=str(run_dir / "tools.log"))
    # Every data source is read (and its rows checked) here, before Ray and the roles start: a bad
    # row fails in seconds, and `ling-rl train` needs no second reading in its preflight.
    for stage in recipe.curriculum.stages:
        for name in stage.data_mix or {}:
            session.source(name)
    if recipe.dft.enabled and resume_from is None:
        session.dft_data = _dft_data(recipe, tokenizer, tools)
    init_ray(recipe.cluster)
    session.startup["startup/ray_s"] = since_process_start()
    try:
        _check_resources(recipe)
        max_len = recipe.rollout.max_prompt_tokens + recipe.rollout.max_response_tokens
        # Whether the engines need vLLM's NCCL weight-transfer engine is known before they start;
        # where they landed (same node as learner rank 0 or not) only after.
        engines_on_cuda = recipe.cluster.rollout.num_gpus > 0
        nccl = SYNC_METHODS[choose_method(recipe.rollout.weight_sync.method, engines_on_cuda)].needs_nccl_engines
        dtype = recipe.rollout.engine_dtype(recipe.model.dtype)
        # Every role's actors are created before any is waited for, so the engines, the learner
        # ranks and the reward workers start concurrently (the engines, slowest, first). Each is
        # stored as soon as it exists: a failure in any wait closes every role already started.
        session.rollout = RolloutGroup(str(model_dir), recipe.rollout, recipe.cluster, dtype, max_len,
                                       nccl_weight_transfer=nccl, wait=False)
        session.learner = LearnerGroup(learner_sections(recipe), str(model_dir), recipe.cluster, wait=False)
        session.rewards = RewardPool(reward_specs(recipe, environment), num_workers=recipe.cluster.reward_workers,
                                     worker_resources=recipe.cluster.reward, wait=False)
        # Waited for in this order (the learner's setup starts once its rank 0 answers): a role's
        # time below is when the driver saw it ready, at most later than it was.
        roles = {"learner": session.learner, "rewards": session.rewards, "engines": session.rollout}
        for name, role in roles.items():
            role.wait_started()
            session.startup[f"startup/{name}_s"] = since_process_start()
        placement = {"learner": session.learner.wait(session.learner.submit("node_id"), "node id"),
                     "engines": session.rollout.node_ids(), "rewards": session.rewards.node_ids()}
        method = choose_method(recipe.rollout.weight_sync.method, engines_on_cuda, placement["learner"][0],
                               placement["engines"])
        _record_placement(run_dir, placement, method)
        session.weight_sync = SYNC_METHODS[method](session.learner, session.rollout, recipe.rollout, dtype,
                                                   sync_tag(recipe.run.name))
        session.weight_sync.setup()
        if resume_from is not None:
            state = checkpointer.driver_state(resume_from)
            session.learner.load_checkpoint(str(resume_from))
            for name, cursor in state["data"].items():
                session.source(name).load_state(cursor)
            session.curriculum.load_state_dict(state["curriculum"])
            session.start_step = int(state["step"])
            session.skipped_steps = int(state.get("skipped_steps", 0))  # absent in older checkpoints
            session.async_state = state.get("async")
            session.sync_weights(session.start_step)
        session.tracker = Tracker(recipe, run_dir, resume_step=session.start_step - 1 if resume_from else None)
        session.startup["startup/ready_s"] = since_process_start()
    except BaseException:
        session.close()
        raise
    return session


def resolve_environment(recipe: Recipe) -> Any:
    """The `environment:` section resolved and checked (`ResolvedEnvironment`): a tool that does
    not import or has no schema fails here, before anything starts; None without the section."""
    if recipe.environment is None:
        return None
    from ling_rl.environments.loading import resolve_environment as resolve

    return resolve(recipe.environment)


def reward_specs(recipe: Recipe, environment: Any) -> list[Any]:
    """The recipe's reward plugins, plus the environment's own `get_reward()` when it has one: one
    more reward source named after the environment class (as TRL logs it), weight
    `environment.reward_weight`."""
    from ling_rl.reward.config import RewardSpec

    specs = list(recipe.rewards)
    if environment is not None and environment.has_reward:
        assert recipe.environment is not None
        specs.append(RewardSpec(name="environment_reward", alias=environment.env_name,
                                weight=recipe.environment.reward_weight))
    labels = [s.key for s in specs]
    if recipe.curriculum.correctness not in labels and (
            recipe.curriculum.stages or recipe.eval.every
            or (recipe.curriculum.dynamic_sampling and recipe.curriculum.filter_on != "reward")):
        # The recipe check took the factory's name for its class's; this is where the two can differ.
        raise RecipeError(f"curriculum.correctness is {recipe.curriculum.correctness!r}, which is not one of the reward "
                          f"sources ({', '.join(labels) or 'none'}): an environment's get_reward() is named after its "
                          "class, and one without get_reward() gives no reward source")
    return specs


def _dft_data(recipe: Recipe, tokenizer: Any, tools: list[dict[str, Any]] | None = None) -> Any:
    from ling_rl.curriculum.data import load_rows
    from ling_rl.curriculum.dft import DFTData

    source = recipe.dft.data or recipe.data.train
    rows = load_rows(source, split=recipe.data.splits.get(source))
    return DFTData(rows, recipe.dft, tokenizer, recipe.data.prompt_key, recipe.data.answer_key, source,
                   chat_template=recipe.data.chat_template, system_prompt=recipe.data.system_prompt,
                   tool_schemas=tools)


def cpu_demand(recipe: Recipe) -> float:
    c = recipe.cluster
    return (recipe.rollout.num_engines * c.rollout.num_cpus + recipe.learner.num_ranks * c.learner.num_cpus
            + c.reward_workers * c.reward.num_cpus)


def _check_resources(recipe: Recipe) -> None:
    """Fail now, naming the keys, rather than wait forever for actors Ray can never place."""
    import ray

    cluster = ray.cluster_resources()
    have = cluster.get("CPU", 0.0)
    need = cpu_demand(recipe)
    if need > have:
        raise RecipeError(f"cluster: the roles ask for {need:g} CPUs (rollout engines x cluster.rollout.num_cpus + "
                          f"learner ranks x cluster.learner.num_cpus + reward workers x cluster.reward.num_cpus) "
                          f"but Ray has {have:g}; lower them or raise cluster.num_cpus")
    for name, (key, want) in custom_demand(recipe).items():
        if want > cluster.get(name, 0.0):
            raise RecipeError(f"{key}: the roles ask for {want:g} units of Ray resource {name!r} in all but the cluster "
                              f"offers {cluster.get(name, 0.0):g} (its nodes declare custom resources with "
                              f"`ray start --resources='{{\"{name}\": N}}'`)")


def custom_demand(recipe: Recipe) -> dict[str, tuple[str, float]]:
    """Per custom Ray resource (`cluster.<role>.resources`): the recipe keys asking for it and the
    units all actors of those roles need together."""
    c = recipe.cluster
    roles = (("cluster.rollout.resources", c.rollout, recipe.rollout.num_engines),
             ("cluster.learner.resources", c.learner, recipe.learner.num_ranks),
             ("cluster.reward.resources", c.reward, c.reward_workers))
    demand: dict[str, tuple[str, float]] = {}
    for key, res, actors in roles:
        for name, amount in res.resources.items():
            keys, total = demand.get(name, ("", 0.0))
            demand[name] = (f"{keys}, {key}" if keys else key, total + amount * actors)
    return demand


def _record_placement(run_dir: Path, nodes: dict[str, list[str]], weight_sync: str) -> None:
    """`placement.json` in the run folder: the Ray node id of every role's actors (in actor order)
    and the weight-sync method `auto` chose from them."""
    import json
    import logging

    record = {**nodes, "weight_sync": weight_sync}
    (run_dir / "placement.json").write_text(json.dumps(record, indent=1) + "\n")
    logging.getLogger(__name__).info("placement: %s", record)


def clean_run_dir(run_dir: Path) -> None:
    """Remove a previous run's folder (for `--fresh`)."""
    shutil.rmtree(run_dir, ignore_errors=True)
