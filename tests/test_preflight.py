"""Preflight (ling_rl/commands/preflight.py): what `ling-rl check` and the start of `ling-rl train` find
before Ray, the engines and the learners start: data rows, prompt lengths, W&B credentials, the
model folder, a run that is already complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ling_rl.config import parse_recipe
from ling_rl.curriculum.data import DatasetError, PromptSource
from ling_rl.commands.preflight import PreflightError, preflight

ROOT = Path(__file__).resolve().parents[1]
ARITH = str(ROOT / "data" / "arith" / "train.jsonl")
RAY_STARTED = "Started a local Ray instance"


def _recipe(**overrides: object) -> dict:
    data: dict = {"model": {"tiny": "tiny"}, "data": {"train": ARITH},
                  "rewards": [{"name": "exact_answer"}], "tracking": {"wandb": {"mode": "offline"}}}
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _problems(data: dict, run_dir: Path | None = None) -> str:
    with pytest.raises(PreflightError) as info:
        preflight(parse_recipe(data), run_dir)
    return str(info.value)


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ling_rl.commands.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=300)


def test_shipped_data_and_tiny_tokenizer_pass() -> None:
    result = preflight(parse_recipe(_recipe()))
    assert result.complete_step is None and result.notes == []


def test_check_reports_broken_json_in_one_line_without_ray(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.jsonl", ['{"prompt": "1 + 1?", "answer": "2"}', '{"prompt": "2 + 2?", "answ'])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(data__train=train)))
    proc = _cli(["check", str(recipe)])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{recipe}: {train}: cannot be read as jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr and RAY_STARTED not in proc.stderr + proc.stdout


@pytest.mark.parametrize("section", ["data.train", "stage data_mix", "eval.data"])
def test_missing_prompt_column_is_found_in_every_prompt_source(tmp_path: Path, section: str) -> None:
    bad = _write(tmp_path / "bad.jsonl", ['{"question": "1 + 1?", "answer": "2"}'])
    data = {
        "data.train": _recipe(data__train=bad),
        "stage data_mix": _recipe(curriculum__stages=[{"name": "mix", "data_mix": {ARITH: 1.0, bad: 0.5}}]),
        "eval.data": _recipe(eval__every=5, eval__data=bad, curriculum__correctness="exact_answer"),
    }[section]
    expected = f"{bad}: row 0: no text column 'prompt' (data.prompt_key); columns: ['answer', 'question']"
    assert _problems(data) == expected


def test_dft_data_without_solution_column(tmp_path: Path) -> None:
    bad = _write(tmp_path / "dft.jsonl", ['{"prompt": "1 + 1?", "answer": "2"}'])
    message = _problems(_recipe(dft={"enabled": True, "data": bad}))
    assert message == f"{bad}: row 0: DFT needs column 'solution'; columns: ['answer', 'prompt']"


def test_prompt_length_uses_the_tokenizer_train_uses(tmp_path: Path, tiny_dir: Path) -> None:
    """Check builds the tiny model's tokenizer without the model; it counts the same tokens as the
    tokenizer `init-tiny` writes (what train loads), so the message is train's."""
    import transformers

    data = _recipe(rollout__max_prompt_tokens=12)
    message = _problems(data)
    with pytest.raises(DatasetError) as at_train:
        PromptSource(parse_recipe(data).data, transformers.AutoTokenizer.from_pretrained(str(tiny_dir)), 12)
    assert message == str(at_train.value)
    assert "prompt has" in message and "above rollout.max_prompt_tokens=12" in message


def test_several_problems_one_line_each(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.jsonl")
    message = _problems(_recipe(data__train=missing, rewards=[{"name": "no_such_plugin"}]))
    lines = message.splitlines()
    assert len(lines) == 2, lines
    assert any("no_such_plugin" in line for line in lines)
    assert f"{missing}: dataset file not found" in lines


def test_model_folder_is_validated(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    message = _problems(_recipe(model={"path": str(folder)}))
    assert message.startswith(f"{folder / 'config.json'}: invalid JSON")
    assert _problems(_recipe(model={"path": str(tmp_path / "absent")})) == f"model.path: {tmp_path / 'absent'} does not exist"


def test_hub_dataset_is_read_from_the_cache_only(tmp_path: Path) -> None:
    """A hub name is read from the local Hugging Face cache (first rows, same errors) and is only a
    note when it is not cached: check never downloads."""
    cache = tmp_path / "hub"
    snapshot = cache / "datasets--acme--prompts" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    _write(snapshot / "train.jsonl", ['{"question": "1 + 1?", "answer": "2"}'])
    (cache / "datasets--acme--prompts" / "refs").mkdir()
    (cache / "datasets--acme--prompts" / "refs" / "main").write_text("0123abcd")
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="0")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(data__train="acme/prompts")))
    proc = _cli(["check", str(recipe)], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "acme/prompts: row 0: no text column 'prompt' (data.prompt_key)" in proc.stderr
    result = preflight(parse_recipe(_recipe(eval__every=5, eval__data="acme/uncached")))
    assert result.notes == ["acme/uncached: not a local file and not in the Hugging Face cache (train downloads it); "
                            "its rows are not checked"]


def test_online_wandb_without_api_key_fails_before_start_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env["HOME"] = str(tmp_path / "home")  # no ~/.netrc, no ~/.config/wandb settings
    proc = _cli(["train", "recipes/tiny_cpu.yaml", "tracking.wandb.mode=online", f"run.output_dir={tmp_path}"], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "tracking.wandb.mode=online but no W&B API key is configured" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and RAY_STARTED not in proc.stdout + proc.stderr


def test_train_reads_every_data_source_before_ray(tmp_path: Path) -> None:
    """`train` leaves data to `session.start`, which reads the DFT and stage sources (not only
    data.train) before Ray starts: a broken DFT file fails in one line, with Ray never started."""
    bad = _write(tmp_path / "dft.jsonl", ['{"prompt": "1 + 1?", "answer": "2"}'])
    proc = _cli(["train", "recipes/quickstart.yaml", f"dft.data={bad}", f"run.output_dir={tmp_path}"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{bad}: row 0: DFT needs column 'solution'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and RAY_STARTED not in proc.stdout + proc.stderr


def _finished_run(run_dir: Path, step: int) -> None:
    """A run folder whose last complete checkpoint holds `step` steps, as the Checkpointer names it."""
    ckpt = run_dir / "checkpoints" / f"step-{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "driver_state.json").write_text(json.dumps({"step": step, "data": {}, "curriculum": {}}))


def test_finished_run_is_reported_without_starting_roles(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _finished_run(run_dir, 3)
    assert preflight(parse_recipe(_recipe(run__steps=3)), run_dir).complete_step == 3
    assert preflight(parse_recipe(_recipe(run__steps=4)), run_dir).complete_step is None
    never = _recipe(run__steps=3, checkpoint={"resume": "never"})
    assert preflight(parse_recipe(never), run_dir).complete_step is None

    proc = _cli(["train", "recipes/tiny_cpu.yaml", "run.steps=3", "--run-dir", str(run_dir)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run already complete at step 3; raise run.steps to continue" in proc.stdout
    assert RAY_STARTED not in proc.stdout + proc.stderr
    assert not (run_dir / "model_init").exists() and not (run_dir / "hf_final").exists()


def _train_lines(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    proc = _cli(["train", "recipes/tiny_cpu.yaml", f"run.output_dir={tmp_path}", *overrides], env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, lines, proc.stdout + proc.stderr


def test_train_without_the_gpus_the_recipe_asks_for_fails_before_start_up(tmp_path: Path) -> None:
    """This box has no GPU: a recipe whose roles ask for GPUs fails in one line naming the keys,
    before Ray or any download (and a hub model that cannot be had is a second line)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    code, lines, out = _train_lines(tmp_path, "cluster.learner.num_gpus=1", "model.tiny=null",
                                    "model.path=acme/not-cached", env=env)
    assert code == 2, out
    assert len(lines) == 2, lines
    assert "learner.num_ranks x cluster.learner.num_gpus = 2" in lines[0] and "this machine has (a local Ray) 0" in lines[0]
    assert lines[1].startswith("model.path: acme/not-cached is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    assert "Traceback" not in out and RAY_STARTED not in out


def test_train_with_a_model_that_cannot_be_had_is_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    code, lines, out = _train_lines(tmp_path, "model.tiny=null", "model.path=acme/not-cached", env=env)
    assert code == 2, out
    assert len(lines) == 1 and "model.path: acme/not-cached" in lines[0], lines
    assert "Traceback" not in out and RAY_STARTED not in out


def test_train_that_does_not_fit_in_memory_exits_3_before_start_up(tmp_path: Path) -> None:
    """The memory plan is a preflight too: the learner of this CPU recipe at a 10M-token
    micro-batch needs more than the host has; train names the role and the key, exit 3 as `plan`."""
    code, lines, out = _train_lines(tmp_path, "learner.micro_batch_tokens=10000000", "learner.logprob_chunk_tokens=10000000")
    assert code == 3, out
    assert lines[0].startswith("error: learner: needs") and "change learner." in lines[0], lines
    assert "Traceback" not in out and RAY_STARTED not in out


# --- GPU memory and tensor parallelism (issue 22, item 16) ------------------------------------------


def test_tensor_parallel_engine_must_hold_its_gpus() -> None:
    """tp 2 with 1 GPU per engine actor is one line naming both keys (vLLM would otherwise start its
    own placement group); tp 2 with 2 GPUs, and CPU engines, pass this check."""
    message = _problems(_recipe(rollout__tensor_parallel_size=2, cluster__rollout__num_gpus=1))
    assert message == ("rollout.tensor_parallel_size=2 but cluster.rollout.num_gpus=1: each engine actor must hold its "
                       "2 GPUs (set cluster.rollout.num_gpus: 2, or lower tensor_parallel_size)")
    preflight(parse_recipe(_recipe(rollout__tensor_parallel_size=2, cluster__rollout__num_gpus=2)))
    preflight(parse_recipe(_recipe(rollout__tensor_parallel_size=2)))


def test_memory_plan_uses_the_gpu_memory_key() -> None:
    """`cluster.gpu_memory_gib` is the GPU memory train's plan uses (no GPU needed to read it); without
    it and without a CUDA device to read, one line names the key; roles on CPU need no GPU memory."""
    from ling_rl.commands.preflight import _gpu_memory_gib, _Problem, memory_problems

    on_gpu = _recipe(cluster__learner__num_gpus=1, learner__device="cuda", learner__num_ranks=1)
    assert _gpu_memory_gib(parse_recipe(_recipe(cluster__learner__num_gpus=1, cluster__gpu_memory_gib=40.5))) == 40.5
    assert memory_problems(parse_recipe(on_gpu), None, 40.5) == []
    small = memory_problems(parse_recipe(on_gpu), None, 0.01)
    assert len(small) == 1 and small[0].startswith("learner: needs") and "0.0 GiB available" in small[0], small
    with pytest.raises(_Problem, match="set cluster.gpu_memory_gib to the memory one GPU reports"):
        _gpu_memory_gib(parse_recipe(on_gpu))  # this box has no CUDA device
    assert _gpu_memory_gib(parse_recipe(_recipe())) is None


_PROBE = """
import ray, sys
from ling_rl.commands.preflight import _cluster_gpu_memory_gib, _Problem
ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, _temp_dir=sys.argv[1])
try:
    _cluster_gpu_memory_gib("auto")
except _Problem as e:
    print("PROBLEM", e)
ray.shutdown()
"""


def test_cluster_gpu_memory_is_read_on_the_gpu_nodes(tmp_path: Path) -> None:
    """With cluster.address the GPU memory is read by a task holding one GPU on each GPU node. A Ray
    node that declares a GPU this CPU box does not have: the probe runs there, sees no CUDA device,
    and the message names cluster.gpu_memory_gib."""
    temp = Path("/tmp") / f"rayp{os.getpid()}"  # Ray's socket paths must stay short
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(temp)], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    finally:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("PROBLEM cluster.address=auto: a node offers Ray GPUs but torch sees no CUDA device in a task holding "
            "one; set cluster.gpu_memory_gib") in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_a_users_files_in_hf_final_are_found_before_training(tmp_path: Path) -> None:
    """The final export refuses a `hf_final` that holds a user's files: train and check say so
    before anything starts (after training only learner rank 0 would find it), naming the key;
    an earlier export of ours there is fine."""
    run = tmp_path / "run"
    (run / "hf_final").mkdir(parents=True)
    (run / "hf_final" / "notes.txt").write_text("mine")
    problems = _problems(_recipe(), run)
    assert "checkpoint.export_hf" in problems and "notes.txt" in problems, problems
    assert (run / "hf_final" / "notes.txt").read_text() == "mine"
    preflight(parse_recipe(_recipe(checkpoint__export_hf=False)), run)  # no final export: nothing to refuse
    (run / "hf_final" / "notes.txt").unlink()
    (run / "hf_final" / "config.json").write_text("{}")  # what an export of ours writes
    preflight(parse_recipe(_recipe()), run)


# --- the environment: section (agentic RL) ------------------------------------------------------------


def _agent_recipe(**environment: object) -> dict:
    return _recipe(data__chat_template=True, environment=environment)


def test_environment_with_a_built_in_tool_and_a_trl_environment_passes() -> None:
    assert preflight(parse_recipe(_agent_recipe(tools=["calculator"]))).notes == []
    counter = str(ROOT / "tests" / "environments" / "trl_counter.py") + ":CounterEnv"
    assert preflight(parse_recipe(_agent_recipe(factory=counter))).notes == []


def test_environment_problems_are_one_line_each_naming_the_key(tmp_path: Path) -> None:
    tools = tmp_path / "tools.py"
    tools.write_text("def add(a, b):\n    return a + b\n\n\nclass NoReset:\n    def look(self) -> str:\n"
                     "        '''Look.'''\n        return 'x'\n")
    # A tool without type hints, a tool whose module does not exist, and an unknown parser: all found at once.
    message = _problems(_agent_recipe(tools=["calculator", f"{tools}:add", "no_such_pkg.tools:mul"],
                                      tool_parser="no_such_parser"))
    lines = message.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"environment.tools[1] '{tools}:add': no JSON schema ("), lines[0]
    assert lines[1] == "environment.tool_parser: unknown tool-call parser 'no_such_parser'; available: auto, hermes"
    message = _problems(_agent_recipe(tools=["no_such_pkg.tools:mul"]))
    assert message == "environment.tools[0] 'no_such_pkg.tools:mul': no module 'no_such_pkg.tools'"
    message = _problems(_agent_recipe(factory=f"{tools}:NoReset"))
    assert message.startswith(f"environment.factory '{tools}:NoReset': its instance (NoReset) has no `reset` method")


def test_environment_prompts_are_measured_with_the_tool_schemas() -> None:
    """The tool list is part of every prompt: a limit the bare prompts fit is too low with it."""
    preflight(parse_recipe(_recipe(data__chat_template=True, rollout__max_prompt_tokens=64)))
    message = _problems(_recipe(data__chat_template=True, rollout__max_prompt_tokens=64,
                                environment={"tools": ["calculator"]}))
    assert "prompt has" in message and "above rollout.max_prompt_tokens=64" in message, message
