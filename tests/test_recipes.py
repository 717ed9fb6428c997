"""Recipes: every shipped recipe loads; malformed ones fail with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ling_rl.config import RecipeError, apply_override, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
MINIMAL = {"model": {"tiny": "tiny"}, "data": {"train": "data/arith/train.jsonl"}, "rewards": [{"name": "exact_answer"}]}


def test_there_are_recipes() -> None:
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    # A reward plugin, or an environment whose get_reward() is the reward (agent.yaml's Ledger).
    assert recipe.rewards or (recipe.environment is not None and recipe.environment.factory is not None)


def _with(**sections: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for dotted, value in sections.items():
        apply_override(data, f"{dotted.replace('__', '.')}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return data


MALFORMED = [
    (_with(learner__lrr=1.0), "learner.lrr: unknown key 'lrr'; allowed keys: num_ranks, lr"),
    (_with(learner__lr="fast"), "learner.lr: Input should be a valid number"),
    (_with(learner__lr=-1), "learner.lr: Input should be greater than 0"),
    (_with(learner__precision="fp16"), "learner.precision: Input should be 'fp32', 'bf16' or 'fp8'"),
    (_with(learner__precision="fp8", learner__fp8={"scaling": "rowwise"}),
     "learner.fp8.fsdp_float8_all_gather: is true, but torchao's float8 all-gather needs learner.fp8.scaling=tensorwise"),
    (_with(rollout__group_size=1), "rollout.group_size: is 1, but algorithm.advantage.type=group_norm"),
    (_with(algorithm__loss__type="ppo"), "algorithm.loss.type: unknown policy loss 'ppo'; available: gspo, lpo, ppo_token"),
    (_with(algorithm__mismatch__type="icepops"), "algorithm.mismatch.type: unknown"),
    (_with(algorithm__mismatch__alpha=6.0), "algorithm.mismatch: icepop band needs alpha < beta"),
    (_with(rewards=[]), "rewards: is empty: give at least one reward plugin"),
    (_with(environment={"tools": ["calculator"]}), "data.chat_template: is false, but environment is set"),
    (_with(environment={"max_turns": 2}), "environment: give `tools` (a list of tool functions)"),
    (_with(data__chat_template=True, environment={"tools": ["calculator"], "max_episode_tokens": 4096}),
     "environment.max_episode_tokens: is 4096, above rollout.max_response_tokens=512"),
    (_with(rewards=[{"weight": 1.0}]), "rewards.0.name: required key is missing"),
    (_with(model__path="/x"), "model: set exactly one of model.path"),
    (_with(tracking__wandb__mode="cloud"), "tracking.wandb.mode: Input should be 'online', 'offline' or 'disabled'"),
    (_with(data__prompt_key=3), "data.prompt_key: Input should be a valid string"),
    (_with(learner__num_ranks=100), "learner.num_ranks: is 100, more than the 64 responses of a step"),
    (_with(curriculum__stages=[{"name": "short", "max_response_tokens": 4096}]),
     "curriculum.stages.0.max_response_tokens: is 4096, above rollout.max_response_tokens=512"),
    (_with(curriculum__stages=[{"name": "easy", "alpha": {"0.5": 1.0}}]), "curriculum.stages.0.alpha: needs a '0.0' edge"),
    (_with(colour="blue"), "colour: unknown key 'colour'; allowed keys: run, model, data"),
]


@pytest.mark.parametrize(("data", "expected"), MALFORMED, ids=[m[1].split(":")[0] for m in MALFORMED])
def test_malformed_recipe_gives_one_line_naming_the_key(data: dict, expected: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(data, source="r.yaml")
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"r.yaml: {expected}"), message


def test_overrides_apply_and_parse_values(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    recipe = load_recipe(path, ["learner.lr=1e-6", "algorithm.loss.type=gspo", "rewards.0.weight=2", "run.name=x y"])
    assert recipe.learner.lr == 1e-6 and recipe.algorithm.loss.type == "gspo"
    assert recipe.rewards[0].weight == 2.0 and recipe.run.name == "x y"
    for bad, needle in [("learner.lr", "expected KEY.PATH=VALUE"), ("rewards.3.weight=1", "list index"),
                        ("learner.lr.x=1", "is a value")]:
        with pytest.raises(RecipeError, match=needle):
            load_recipe(path, ["learner.lr=1e-6", bad])


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="broken.yaml: invalid YAML"):
        load_recipe(path)
    path.write_text("- a list\n")
    with pytest.raises(RecipeError, match="a recipe is a YAML mapping"):
        load_recipe(path)


def test_cli_check_prints_error_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_with(learner__lrr=1.0)))
    proc = subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "learner.lrr: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_cli_check_accepts_shipped_recipes(path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", "check", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_cli_help_imports_no_heavy_library() -> None:
    """`ling-rl --help` must stay instant: the CLI module may not import torch, vLLM or Ray."""
    code = "import sys, ling_rl.commands.cli; print(sorted(m for m in ('torch', 'vllm', 'ray', 'transformers') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    help_proc = subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", "--help"], capture_output=True, text=True)
    assert help_proc.returncode == 0 and "init-tiny" in help_proc.stdout and "check" in help_proc.stdout


def test_cli_init_tiny_rejects_unknown_preset(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", "init-tiny", str(tmp_path / "m"), "--preset", "huge"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown tiny preset 'huge'" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_role_threads_default_to_reserved_cpus_and_are_validated() -> None:
    from pydantic import ValidationError

    from ling_rl.cluster.config import RoleResources

    assert RoleResources(num_cpus=0.5).actor_threads == 1
    assert RoleResources(num_cpus=3).actor_threads == 3
    assert RoleResources(num_cpus=1, threads=2).actor_threads == 2
    with pytest.raises(ValidationError, match="threads"):
        RoleResources(threads=0)
