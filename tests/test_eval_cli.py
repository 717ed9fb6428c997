"""`ling-rl eval` and a real run with chat templates and TRL's own reward functions.

The real test trains the tiny model for 2 steps (chat template, system prompt, `trl.rewards`
functions, in-run evaluation, a curriculum stage with a shorter response budget), then evaluates
its export and its checkpoint with `ling-rl eval`: the export's evaluation, with the run's
settings, repeats the in-run evaluation of the last step (both with the evaluation's budget, not
the stage's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ling_rl.commands.cli import app

ROOT = Path(__file__).resolve().parents[1]
EVAL = str(ROOT / "data/arith/eval.jsonl")


def _cli(*args: str) -> tuple[int, str]:
    # --verbose: in this test process, leave logging as it is (no routing into a logs folder).
    result = CliRunner().invoke(app, [*args, "--verbose"])
    return result.exit_code, result.output


def test_a_missing_model_is_named(tmp_path: Path) -> None:
    code, out = _cli("eval", str(tmp_path / "nope"), "--data", EVAL, "--rewards", "exact_answer")
    assert code == 2 and f"{tmp_path / 'nope'}: no such model folder or checkpoint" in out, out


def test_an_unknown_reward_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    code, out = _cli("eval", str(tiny_dir), "--data", EVAL, "--rewards", "exact_answer", "--rewards", "no_such_reward",
                     "--out", str(tmp_path / "g.jsonl"))
    assert code == 1 and "unknown reward plugin 'no_such_reward'" in out, out


def test_an_unreadable_row_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1?", "answer": "2"}\n{"question": "2 + 2?", "answer": "4"}\n')
    code, out = _cli("eval", str(tiny_dir), "--data", str(bad), "--rewards", "exact_answer", "--out", str(tmp_path / "g.jsonl"))
    assert code == 1 and f"{bad}: row 1: no text column 'prompt' (data.prompt_key)" in out, out


def test_without_a_run_folder_the_rewards_must_be_named(tiny_dir: Path) -> None:
    code, out = _cli("eval", str(tiny_dir), "--data", EVAL)
    assert code == 2 and "name the reward plugins with --rewards" in out, out


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.vllm
def test_chat_template_run_with_trl_rewards_then_eval_of_export_and_checkpoint(tmp_path: Path) -> None:
    overrides = {
        "run.steps": 2, "run.output_dir": str(tmp_path), "run.name": "chat",
        "data.chat_template": True, "data.system_prompt": "Answer with the number.",
        "rewards": '[{name: exact_answer}, {name: "trl.rewards:think_format_reward", weight: 0.5},'
                   ' {name: "trl.rewards:accuracy_reward", required: false}]',
        "learner.num_ranks": 1, "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_response_tokens": 8,
        "curriculum.stages": "[{name: short, max_response_tokens: 4}]",
        "eval.every": 2, "eval.data": EVAL, "eval.max_prompts": 3, "eval.samples": 2,
        "checkpoint.every": 0, "tracking.progress_bar": False,
    }
    _run(["train", "recipes/tiny_cpu.yaml", *(f"{k}={v}" for k, v in overrides.items())])
    run_dir = tmp_path / "chat"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # TRL's functions took the conversational completions: no call failed
        assert row["reward/think_format_reward/failures"] == 0 and row["reward/accuracy_reward/failures"] == 0, row
        assert row["reward/think_format_reward/calls"] > 0
    in_run = rows[-1]
    assert "eval/reward_sampled/think_format_reward" in in_run

    # The export, with the run folder's recipe: the in-run evaluation of the last step again.
    proc = _run(["eval", str(run_dir / "hf_final"), "--data", EVAL])
    generations = run_dir / "eval" / "hf_final.eval.jsonl"
    assert f"settings of {run_dir / 'recipe.yaml'}" in proc.stdout and str(generations) in proc.stdout
    assert (run_dir / "eval" / "logs" / "engine-0.log").is_file() and "vLLM" not in proc.stdout + proc.stderr
    records = [json.loads(line) for line in generations.read_text().splitlines()]
    assert len(records) == 3 * (1 + 2) and [r["mode"] for r in records] == ["greedy"] * 3 + ["sampled"] * 6
    assert all(r["prompt"].startswith("<|im_start|>system\nAnswer with the number.<|im_end|>\n") for r in records)
    assert set(records[0]["rewards"]) == {"exact_answer", "think_format_reward", "accuracy_reward"}
    greedy = [r for r in records if r["mode"] == "greedy"]
    length = sum(r["response_tokens"] for r in greedy) / len(greedy)
    accuracy = sum(bool(r["correct"]) for r in greedy) / len(greedy)
    assert (length, accuracy) == (in_run["eval/response_len_greedy"], in_run["eval/accuracy_greedy"])
    assert max(r["response_tokens"] for r in records) > 4  # the evaluation's budget (8), not the stage's (4)
    assert all(isinstance(r["prompt_tokens"], int) and r["prompt_tokens"] > 0 for r in records)  # the rendered prompt
    table = {line.split("  ")[0].strip(): line.split()[-2:] for line in proc.stdout.splitlines() if "  " in line}
    assert table["mean length (tokens)"][0] == f"{in_run['eval/response_len_greedy']:.1f}", proc.stdout
    assert "reward think_format_reward" in table and "accuracy (exact_answer >= 1)" in table, proc.stdout

    # A checkpoint, exported on the fly, with other rewards: the first one judges accuracy.
    out = tmp_path / "ckpt.jsonl"
    proc = _run(["eval", str(run_dir / "checkpoints" / "step-000002"), "--data", EVAL, "--rewards",
                 "trl.rewards:think_format_reward", "--samples", "1", "--max-prompts", "2", "--out", str(out)])
    assert "accuracy (think_format_reward >= 1)" in proc.stdout, proc.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * 2 and all(set(r["rewards"]) == {"think_format_reward"} for r in records)


def test_a_run_folder_recipe_older_than_the_schema_says_so(tmp_path: Path) -> None:
    (tmp_path / "hf_final").mkdir()
    (tmp_path / "recipe.yaml").write_text("model: {tiny: tiny}\ndata: {train: x.jsonl}\nrewards: [{name: exact_answer, label: null}]\n")
    code, out = _cli("eval", str(tmp_path / "hf_final"), "--data", EVAL)
    assert code == 2 and "rewards.0.label: unknown key 'label'" in out, out
    assert "the run folder's recipe.yaml does not fit this version of ling-rl: give the settings with --recipe" in out


def test_an_environment_tool_without_a_schema_is_named_before_anything_starts(tmp_path: Path) -> None:
    model = tmp_path / "model"  # never read: the environment fails first
    model.mkdir()
    tools = tmp_path / "tools.py"
    tools.write_text("def add(a, b):\n    return a + b\n")
    recipe = tmp_path / "agent.yaml"
    recipe.write_text(f"model: {{tiny: tiny}}\ndata: {{train: {EVAL}, chat_template: true}}\n"
                      f"rewards: [{{name: exact_answer}}]\nenvironment: {{tools: [calculator, '{tools}:add']}}\n")
    code, out = _cli("eval", str(model), "--data", EVAL, "--recipe", str(recipe), "--out", str(tmp_path / "g.jsonl"))
    assert code == 1 and f"environment.tools[1] '{tools}:add': no JSON schema (" in out, out
    assert not (tmp_path / "g.jsonl").exists()  # failed before the model, the engines and the output file


def test_summary_shows_the_greedy_episodes_counts_and_the_environment_reward() -> None:
    from ling_rl.commands.eval_cli import summary
    from ling_rl.config import parse_recipe
    from ling_rl.driver.evaluation import EvalOutcome

    recipe = parse_recipe({"model": {"tiny": "tiny"}, "data": {"train": EVAL, "chat_template": True},
                           "rewards": [{"name": "exact_answer"}], "environment": {"tools": ["calculator"]}})
    metrics = {"eval/accuracy_greedy": 0.5, "eval/accuracy_sampled": 0.25, "eval/response_len_greedy": 120.0,
               "eval/response_len_sampled": 100.0, "eval/reward_greedy": 0.5, "eval/reward_sampled": 0.25,
               "eval/reward_greedy/exact_answer": 0.5, "eval/reward_sampled/CounterEnv": 2.0,
               "eval/agent/turns_mean": 2.5, "eval/agent/tool_calls_mean": 1.75, "eval/agent/valid_tool_calls_mean": 1.5,
               "eval/agent/parse_errors": 3.0, "eval/agent/failed_episodes": 0.0}
    lines = summary(EvalOutcome(metrics, []), recipe)
    rows = {line[:32].strip(): line[32:].split() for line in lines[1:]}
    assert rows["reward exact_answer"] == ["0.500", "-"] and rows["reward CounterEnv"] == ["-", "2.000"], lines
    assert rows["turns per episode"] == ["2.50", "-"] and rows["tool calls per episode"] == ["1.75", "-"]
    assert rows["valid tool calls per episode"] == ["1.50", "-"] and rows["malformed tool calls"] == ["3", "-"]
    assert rows["failed episodes"] == ["0", "-"]
    single_turn = {k: v for k, v in metrics.items() if "/agent/" not in k}
    assert not any("episode" in line for line in summary(EvalOutcome(single_turn, []), recipe))
