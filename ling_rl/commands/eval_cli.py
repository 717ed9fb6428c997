"""`ling-rl eval`: the held-out evaluation of a model outside training.

    ling-rl eval runs/quickstart/hf_final --data data/arith/eval.jsonl
    ling-rl eval runs/quickstart/checkpoints/step-000040 --data data/arith/eval.jsonl --samples 8
    ling-rl eval path/to/model --data org/dataset --rewards math --rewards format model.dtype=float32

The model is an exported Hugging Face folder (or a hub name) or a ling-rl checkpoint (exported to
a temporary folder first). The settings are a recipe's: `--recipe`, else the `recipe.yaml` of the
run folder the model belongs to (RUN_DIR/hf_final, RUN_DIR/checkpoints/step-N), else the schema's
defaults; the options and dotted overrides change them. The prompts are read and rendered as in
training (`data:` keys, chat template), and `ling_rl.driver.evaluation.run_evaluation`, the code of the
in-run evaluation, generates (one rollout engine group) and scores (reward workers). A recipe with
an `environment:` section (agentic RL) is evaluated on whole episodes, as in the run: prompts show
the tool schemas, each response is an episode (tool calls run, results fed back), the environment's
`get_reward` is one more reward source, and the greedy episodes' counts are `eval/agent/*`; the
tool processes' output goes to the generations file's `.tools.log` beside it.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ling_rl.driver.checkpoint import DRIVER_STATE
from ling_rl.config import Recipe, RecipeError, apply_override, parse_recipe, read_recipe_tree
from ling_rl.driver.evaluation import EvalOutcome
from ling_rl.reward.config import function_name


@dataclass
class EvalSetup:
    """What `ling-rl eval` runs: the recipe it evaluates with, where it came from, the model."""

    recipe: Recipe
    recipe_source: str
    """The recipe file the settings came from, or `defaults`."""
    model: str
    """The model argument as given (a folder, a hub name or a checkpoint)."""
    checkpoint: Path | None
    """The checkpoint to export first, when the model is one."""
    run_dir: Path | None
    """The run folder the model belongs to, if any (the default place of the generations file)."""


def eval_setup(model: str, data: str, recipe_file: Path | None = None, rewards: list[str] | None = None,
               samples: int | None = None, max_prompts: int | None = None, correctness: str | None = None,
               overrides: list[str] | None = None) -> EvalSetup:
    """The recipe of one evaluation; `RecipeError` names what is wrong (a missing model or recipe,
    a bad override, a correctness plugin that is not among the rewards)."""
    given_recipe, path = recipe_file, Path(model)
    checkpoint = path if (path / DRIVER_STATE).is_file() else None
    run_dir = path.parent.parent if checkpoint else (path.parent if (path.parent / "recipe.yaml").is_file() else None)
    if recipe_file is None and run_dir is not None and (run_dir / "recipe.yaml").is_file():
        recipe_file = run_dir / "recipe.yaml"
    if not path.exists() and (model.count("/") != 1 or path.parent.exists()):  # neither a folder nor a hub name
        raise RecipeError(f"{model}: no such model folder or checkpoint (give an exported Hugging Face folder, "
                          "e.g. RUN_DIR/hf_final, a checkpoint RUN_DIR/checkpoints/step-N, or a hub name org/model)")
    tree = _recipe_tree(recipe_file, data, rewards, from_run=given_recipe is None)
    tree["model"] = {**{k: v for k, v in tree.get("model", {}).items() if k != "tiny"}, "path": model}
    tree["eval"] = {**tree.get("eval", {}), "data": data, "every": 1}
    if samples is not None:
        tree["eval"]["samples"] = samples
    if max_prompts is not None:
        tree["eval"]["max_prompts"] = max_prompts
    curriculum = tree.setdefault("curriculum", {})
    keys = [entry.get("alias") or function_name(str(entry.get("name", ""))) for entry in tree.get("rewards") or []]
    if correctness is not None:
        curriculum["correctness"] = correctness
    elif rewards and curriculum.get("correctness", "exact_answer") not in keys:
        curriculum["correctness"] = keys[0]  # --rewards replaced the recipe's: the first one judges
    for item in overrides or []:
        apply_override(tree, item)
    parsed = parse_recipe(tree, source=str(recipe_file or "ling-rl eval"))
    return EvalSetup(parsed, str(recipe_file or "defaults"), model, checkpoint, run_dir)


def _check_run_recipe(tree: dict[str, Any], recipe_file: Path) -> None:
    """A run folder's own recipe.yaml, as written by the run, must fit this version's schema (a run
    of an older ling-rl may have a key renamed since): say so, rather than blame the options."""
    try:
        parse_recipe(copy.deepcopy(tree), source=str(recipe_file))
    except RecipeError as e:
        raise RecipeError(f"{e}\n(the run folder's recipe.yaml does not fit this version of ling-rl: give the "
                          "settings with --recipe RECIPE.yaml)") from None


def _recipe_tree(recipe_file: Path | None, data: str, rewards: list[str] | None, from_run: bool) -> dict[str, Any]:
    if recipe_file is None:
        if not rewards:
            raise RecipeError("ling-rl eval: the model is not in a run folder (no recipe.yaml beside it) and no "
                              "--recipe was given: name the reward plugins with --rewards (e.g. --rewards exact_answer)")
        tree: dict[str, Any] = {"data": {"train": data}}
    else:
        tree = read_recipe_tree(recipe_file)
        if from_run:
            _check_run_recipe(tree, recipe_file)
    if rewards:
        tree["rewards"] = [{"name": name} for name in rewards]
    return tree


def default_output(setup: EvalSetup) -> Path:
    """Where the generations go by default: RUN_DIR/eval/ for a model of a run folder, else ./eval/,
    named after the model and the data (`hf_final.eval.jsonl` for data/arith/eval.jsonl)."""
    name = Path(setup.model).name or "model"
    data_name = Path(str(setup.recipe.eval.data)).stem.replace("/", "_")
    return (setup.run_dir or Path(".")) / "eval" / f"{name}.{data_name}.jsonl"


def run(setup: EvalSetup, out: Path, progress: Any = print) -> EvalOutcome:
    """Evaluate: export a checkpoint if needed, read the prompts, start the engines and reward
    workers, run the in-run evaluation's code, write the generations to `out` (JSONL)."""
    from ling_rl.driver.session import resolve_environment
    from ling_rl.reward.loading import resolve_rewards

    # An unknown plugin, a tool that does not import or has no schema: they fail now, before an
    # export or an engine starts.
    resolve_rewards(setup.recipe.rewards)
    environment = resolve_environment(setup.recipe)
    with tempfile.TemporaryDirectory(prefix="ling-rl-eval-") as tmp:
        model_dir = _model_folder(setup, Path(tmp), progress)
        return _evaluate(setup.recipe, model_dir, out, progress, environment)


def _model_folder(setup: EvalSetup, tmp: Path, progress: Any) -> Path:
    from ling_rl.driver.session import prepare_model

    if setup.checkpoint is None:
        return prepare_model(setup.recipe, tmp)  # the folder, checked (or a hub model, downloaded)
    from ling_rl.commands.export import export_checkpoint

    progress(f"exporting checkpoint {setup.checkpoint} to a temporary Hugging Face folder")
    return export_checkpoint(setup.checkpoint, tmp / "hf")


def _evaluate(recipe: Recipe, model_dir: Path, out: Path, progress: Any, environment: Any = None) -> EvalOutcome:
    """`environment`: the recipe's `environment:` section resolved (`ResolvedEnvironment`), or None."""
    import transformers

    from ling_rl.cluster.ray_init import init_ray
    from ling_rl.driver.evaluation import EVAL_SET, eval_max_tokens, eval_prompts, run_evaluation
    from ling_rl.driver.session import reward_specs
    from ling_rl.reward.pool import RewardPool
    from ling_rl.rollout.group import RolloutGroup

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    prompts = eval_prompts(recipe, tokenizer, list(environment.schemas) if environment is not None else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")  # a folder we cannot write to fails now, not after the generation
    episodes = _episode_runner(recipe, environment, tokenizer, out)  # the template's tool support: checked now
    cfg, max_tokens = recipe.rollout, eval_max_tokens(recipe)
    what = f"episodes of up to {recipe.environment.max_turns} turns" if recipe.environment is not None else "responses"
    sets = Counter(sample.columns.get(EVAL_SET) for sample in prompts.samples)  # None: eval.data's rows
    where = "".join([f"{sets[None]} prompts from {recipe.eval.data}",
                     *(f", {n} from {name} ({recipe.eval.extra_data[name]})" for name, n in sets.items() if name)])
    progress(f"{where}; 1 greedy + {recipe.eval.samples} sampled "
             f"{what} each, up to {max_tokens} tokens; starting {cfg.num_engines} engine(s) and "
             f"{recipe.cluster.reward_workers} reward worker(s)")
    engines = rewards = None
    try:
        init_ray(recipe.cluster)
        engines = RolloutGroup(str(model_dir), cfg, recipe.cluster, cfg.engine_dtype(recipe.model.dtype),
                               cfg.max_prompt_tokens + cfg.max_response_tokens, wait=False)
        rewards = RewardPool(reward_specs(recipe, environment), num_workers=recipe.cluster.reward_workers,
                             worker_cpus=recipe.cluster.reward.num_cpus, wait=False)
        rewards.wait_started()
        engines.wait_started()
        outcome = run_evaluation(prompts.samples, engines, rewards, recipe.eval, max_tokens,
                                 recipe.curriculum.correctness, recipe.curriculum.correct_threshold, version=0,
                                 episodes=episodes)
    finally:
        for role in (engines, rewards):
            if role is not None:
                role.shutdown()
        if episodes is not None:
            episodes.close()
    with open(out, "w") as f:
        for record in outcome.generations:
            f.write(json.dumps(record) + "\n")
    return outcome


def _episode_runner(recipe: Recipe, environment: Any, tokenizer: Any, out: Path) -> Any:
    """The `EpisodeRunner` the run builds (ling_rl/driver/session.py), its tool processes' output
    in `<out>.tools.log`; None without an environment."""
    if environment is None:
        return None
    from ling_rl.rollout.episodes import EpisodeRunner

    assert recipe.environment is not None  # resolve_environment returned one
    return EpisodeRunner(environment, recipe.environment, tokenizer, recipe.rollout.max_prompt_tokens,
                         log_path=str(out.with_suffix(".tools.log")))


AGENT_LINES = (("agent/turns_mean", "turns per episode", ".2f"),
               ("agent/tool_calls_mean", "tool calls per episode", ".2f"),
               ("agent/valid_tool_calls_mean", "valid tool calls per episode", ".2f"),
               ("agent/parse_errors", "malformed tool calls", ".0f"),
               ("agent/failed_episodes", "failed episodes", ".0f"))
"""The greedy episodes' `eval/agent/*` counts `ling-rl eval` prints: (metric, label, format)."""


def summary(outcome: EvalOutcome, recipe: Recipe) -> list[str]:
    """The lines `ling-rl eval` prints: accuracy and mean length per mode, then each reward source's mean;
    with episodes, the greedy episodes' turns, tool calls (valid: the tool returned), malformed calls
    and failed episodes."""
    m = outcome.metrics
    judge = f"{recipe.curriculum.correctness} >= {recipe.curriculum.correct_threshold:g}"
    lines = [f"{'':<32}{'greedy':>10}{'sampled':>10}",
             f"{'accuracy (' + judge + ')':<32}{m['eval/accuracy_greedy']:>10.3f}{m['eval/accuracy_sampled']:>10.3f}",
             f"{'mean length (tokens)':<32}{m['eval/response_len_greedy']:>10.1f}{m['eval/response_len_sampled']:>10.1f}"]
    keys = [r.key for r in recipe.rewards]
    # Sources beside the recipe's plugins: an environment's `get_reward`, named after its class.
    keys += sorted({k.split("/", 2)[2] for k in m if k.startswith(("eval/reward_greedy/", "eval/reward_sampled/"))}
                   - set(keys))
    for key, label in [("", "reward (total)")] + [(f"/{k}", f"reward {k}") for k in keys]:
        values = [m.get(f"eval/reward_{mode}{key}") for mode in ("greedy", "sampled")]
        lines.append(f"{label:<32}" + "".join(f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in values))
    for key, label, spec in AGENT_LINES:  # episodes (an environment): the greedy ones' counts
        value = m.get(f"eval/{key}")
        if value is not None:
            lines.append(f"{label:<32}{value:>10{spec}}{'-':>10}")
    return lines
