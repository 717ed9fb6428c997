"""`ling-rl` command line. Heavy libraries (torch, vLLM, Ray) are imported inside the commands so
that `ling-rl --help` stays instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="ling-rl",
    help="Post-training RL for Ling 2.0 MoE models: LPO, Evo-CoT, IcePop, vLLM rollouts, FSDP2 learner.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command("init-tiny")
def init_tiny(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write: new, empty, or a model folder ling-rl wrote (replaced atomically); any other folder is refused.")],
    preset: Annotated[str, typer.Option(help="Size of the Ling MoE: tiny | small.")] = "tiny",
    arch: Annotated[str, typer.Option(help="Architecture: ling (the Ling 2.0 MoE) | qwen3 | llama | qwen3_moe (through transformers).")] = "ling",
    seed: Annotated[int, typer.Option(help="Seed of weights and tokenizer.")] = 0,
) -> None:
    """Build a tiny random model (a Ling 2.0 MoE, a Qwen3 / Llama / Qwen3-MoE) and its byte-level BPE
    tokenizer locally."""
    from ling_rl.models.tiny import PRESETS, TINY_ARCHS, init_tiny as build

    if arch not in TINY_ARCHS:
        _fail(f"--arch: unknown architecture {arch!r}; available: {', '.join(TINY_ARCHS)}")
    if preset not in PRESETS:
        _fail(f"unknown tiny preset {preset!r}; available: {', '.join(PRESETS)}")
    if arch != "ling" and preset != "tiny":
        _fail(f"--preset {preset}: sizes are for --arch ling; --arch {arch} has one tiny size")
    name = preset if arch == "ling" else arch  # the model.tiny name of this model
    try:
        folder = build(out_dir, preset=name, seed=seed)
    except ValueError as e:
        _fail(str(e))
    console.print(f"wrote tiny model.tiny={name} (seed {seed}) to [bold]{folder}[/]")


@app.command()
def check(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. learner.lr=1e-6.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Also check this run folder (resume checkpoint, run complete).")] = None,
) -> None:
    """Validate a recipe without starting anything: schema, cross-field rules, reward plugins, W&B
    credentials, the model folder, every dataset's rows and prompt lengths. Prints the resolved tree."""
    import yaml

    from ling_rl.config import RecipeError, load_recipe

    try:
        parsed = load_recipe(recipe, overrides or [])
    except RecipeError as e:
        _fail(str(e))
    from ling_rl.commands.preflight import PreflightError, preflight

    try:
        result = preflight(parsed, run_dir)
    except PreflightError as e:
        _fail("\n".join(f"{recipe}: {line}" for line in str(e).splitlines()))
    console.print(yaml.safe_dump(parsed.model_dump(mode="json"), sort_keys=False), highlight=False, end="")
    for note in result.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False, soft_wrap=True)
    if result.complete_step is not None:
        console.print(f"[yellow]note[/]: {_complete_line(result.complete_step)}", highlight=False, soft_wrap=True)
    console.print(f"[green]ok[/]: {recipe}")


def _complete_line(step: int) -> str:
    return f"run already complete at step {step}; raise run.steps to continue"


@app.command()
def sample(
    model_dir: Annotated[Path, typer.Argument(help="A model folder (from init-tiny, export, or a release).")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompt text (repeatable).")] = None,
    n: Annotated[int, typer.Option(help="Samples per prompt.")] = 2,
    max_tokens: Annotated[int, typer.Option(help="Tokens per sample.")] = 32,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    dtype: Annotated[str, typer.Option(help="Engine dtype: float32 | bfloat16.")] = "float32",
) -> None:
    """Generate from a model folder with vLLM and show the samples with their log-probs."""
    from ling_rl.models.backend import resolve_backend
    from ling_rl.models.ling_config import ModelFolderError

    try:
        resolve_backend(model_dir).check_folder(model_dir)
    except ModelFolderError as e:
        _fail(str(e))
    from ling_rl.rollout.vllm_engine import sample_texts

    prompts = prompt or ["Ann has 12 apples, buys 5 more and gives away 3. How many apples does Ann have now?"]
    for p, outs in zip(prompts, sample_texts(model_dir, prompts, n, max_tokens, temperature, seed, dtype)):
        console.print(f"[bold]prompt[/]: {p}", highlight=False)
        for text, logp in outs:
            console.print(f"  [cyan]sample[/] (sum log p = {logp:.2f}): {text!r}", highlight=False)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. learner.lr=1e-6.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: run.output_dir/run.name).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the roles' output (vLLM, Ray, libraries) on the "
                                                            "console instead of RUN_DIR/logs/.")] = False,
) -> None:
    """Train with RL: vLLM rollouts, reward workers, FSDP2 learner. Resumes from the run folder's
    latest checkpoint unless checkpoint.resume=never. The console shows progress and errors; the
    roles' output goes to RUN_DIR/logs/ (`--verbose`: to the console)."""
    from ling_rl.config import RecipeError, load_recipe

    try:
        parsed = load_recipe(recipe, overrides or [])
    except RecipeError as e:
        _fail(str(e))
    from ling_rl.commands.preflight import PreflightError, preflight

    folder = run_dir or Path(parsed.run.output_dir) / parsed.run.name
    try:
        # Before Ray and the roles start (tens of seconds on CPU), before any download: GPUs, the model,
        # rewards, W&B; the data are read once, by session.start, also before Ray.
        ready = preflight(parsed, folder, data=False, resources=True)
    except PreflightError as e:
        _fail(str(e))
    from ling_rl.commands.preflight import memory_problems

    too_big = memory_problems(parsed, recipe, ready.gpu_memory_gib)
    if too_big:  # the same verdict and exit code as `ling-rl plan`
        _fail("\n".join(too_big) + f"\n(see `ling-rl plan {recipe}`)", code=3)
    if ready.complete_step is not None:
        console.print(_complete_line(ready.complete_step), highlight=False, soft_wrap=True)
        raise typer.Exit(0)
    from ling_rl import run_logs
    from ling_rl.errors import USER_ERRORS
    from ling_rl.driver.interrupt import Interrupted
    from ling_rl.driver.loop import train as run_training

    logs = run_logs.route(folder, verbose)
    if logs is not None:
        console.print(f"run folder {folder}; roles' output in {logs}/ (engine-*.log, learner-*.log, reward-*.log, "
                      "driver.log); --verbose shows it here", markup=False, highlight=False, soft_wrap=True)
    try:
        final = run_training(parsed, folder)
    except USER_ERRORS as e:
        for line in run_logs.failure_report(e):
            err_console.print(line, markup=False, highlight=False, soft_wrap=True)
        _fail(str(e), code=1)
    except Interrupted as e:
        console.print(f"[yellow]{e}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _fail("interrupted before a step completed (or by a second Ctrl-C): nothing saved since the last "
              "checkpoint", code=130)
    console.print(f"[green]done[/]: run folder [bold]{folder}[/]" + (f", model [bold]{final}[/]" if final.exists() else ""))


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. learner.micro_batch_tokens=16384.")] = None,
    gpu_memory_gib: Annotated[float, typer.Option(help="Memory of one GPU as the device reports it (GiB; an 80 GB H100: about 79.2).")] = 79.2,
    host_memory_gib: Annotated[float | None, typer.Option(help="Host memory of one node (GiB; default: this machine's).")] = None,
    model_config: Annotated[Path | None, typer.Option(help="A config.json to plan with instead of the recipe model's.")] = None,
) -> None:
    """Estimate each role's memory (learner per rank, engine per GPU, host) and whether it fits.
    Exit code 3 names the role that does not fit and the recipe key to change."""
    from ling_rl.config import RecipeError, load_recipe
    from ling_rl.commands.plan import PlanError, model_config as read_model_config, plan_memory

    try:
        parsed = load_recipe(recipe, overrides or [])
        model = read_model_config(parsed, recipe, model_config)
        roles = plan_memory(parsed, model, gpu_memory_gib, host_memory_gib)
    except (RecipeError, PlanError) as e:
        _fail(str(e))
    from ling_rl.commands.plan import model_summary, plan_table

    console.print(model_summary(model), highlight=False, soft_wrap=True)
    console.print(plan_table(roles))
    problems = [r.problem() for r in roles if not r.fits]
    if problems:
        _fail("\n".join(problems), code=3)
    console.print(f"[green]fits[/]: {recipe}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder: RUN_DIR/checkpoints/step-N.")],
    out_dir: Annotated[Path, typer.Argument(help="Hugging Face folder to write: new, empty, or a previous export (replaced atomically); any other folder is refused.")],
) -> None:
    """Write a Hugging Face BailingMoeV2 folder (loads in vLLM) from a training checkpoint."""
    from ling_rl.errors import USER_ERRORS
    from ling_rl.commands.export import export_checkpoint

    try:
        export_checkpoint(checkpoint, out_dir)
    except USER_ERRORS as e:
        _fail(str(e), code=1)
    console.print(f"wrote [bold]{out_dir}[/] from {checkpoint}")


@app.command("eval")
def eval_model(
    model: Annotated[str, typer.Argument(help="An exported Hugging Face folder (RUN_DIR/hf_final), a checkpoint "
                                              "(RUN_DIR/checkpoints/step-N) or a hub name.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted recipe overrides, e.g. eval.temperature=0.7.")] = None,
    data: Annotated[str, typer.Option("--data", help="Held-out prompts: a JSONL/JSON/parquet/CSV file or a hub dataset.")] = ...,
    rewards: Annotated[list[str] | None, typer.Option("--rewards", help="Reward plugin (repeatable; default: the recipe's).")] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="Sampled responses per prompt (default: eval.samples).")] = None,
    max_prompts: Annotated[int | None, typer.Option("--max-prompts", min=1, help="First N rows (default: eval.max_prompts).")] = None,
    correctness: Annotated[str | None, typer.Option(help="Plugin whose score decides accuracy (default: curriculum.correctness).")] = None,
    recipe: Annotated[Path | None, typer.Option(help="Recipe to take the settings from (default: the run folder's recipe.yaml).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Generations JSONL (default: RUN_DIR/eval/ or ./eval/).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the engines' and reward workers' output on the "
                                                            "console instead of logs/ beside the generations file.")] = False,
) -> None:
    """Evaluate a model on held-out prompts with the in-run evaluation's code: accuracy (greedy and
    sampled), mean length, per-plugin rewards; writes every generation to a JSONL file."""
    from ling_rl.config import RecipeError
    from ling_rl.commands.eval_cli import default_output, eval_setup

    try:
        setup = eval_setup(model, data, recipe, rewards, samples, max_prompts, correctness, overrides or [])
    except RecipeError as e:
        _fail(str(e))
    from ling_rl import run_logs
    from ling_rl.errors import USER_ERRORS
    from ling_rl.commands.eval_cli import run, summary

    target = out or default_output(setup)
    console.print(f"evaluating [bold]{model}[/] with the settings of {setup.recipe_source}", highlight=False, soft_wrap=True)
    logs = run_logs.route(target.parent, verbose)
    if logs is not None:
        console.print(f"engines' and reward workers' output in {logs}/; --verbose shows it here", markup=False,
                      highlight=False, soft_wrap=True)
    try:
        outcome = run(setup, target, progress=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    except USER_ERRORS as e:
        for line in run_logs.failure_report(e):
            err_console.print(line, markup=False, highlight=False, soft_wrap=True)
        _fail(str(e), code=1)
    for line in summary(outcome, setup.recipe):
        console.print(line, markup=False, highlight=False)
    console.print(f"wrote [bold]{target}[/] ({len(outcome.generations)} generations)", highlight=False, soft_wrap=True)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (holds metrics.jsonl).")],
    others: Annotated[list[Path] | None, typer.Argument(help="More run folders: each gets its report, and all are "
                                                              "compared on one figure (e.g. an A/B of one recipe).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder to write (default: RUN_DIR/report; with more "
                                                           "runs, the comparison's: RUN_DIR/report/compare).")] = None,
) -> None:
    """PNG plots (reward, eval accuracy, length, gap, stages, accuracy-vs-length frontier) and a report.md;
    given several run folders, also one comparison (frontiers on one figure, accuracy curves, a table)."""
    runs = [run_dir, *(others or [])]
    for folder in runs:
        if not (folder / "metrics.jsonl").is_file():
            _fail(f"{folder}: no metrics.jsonl (not a run folder, or tracking.jsonl was off)")
    from ling_rl.tracking.compare import build_comparison
    from ling_rl.tracking.report import build_report, upload_report

    try:
        for folder in runs[1:]:
            console.print(f"wrote [bold]{build_report(folder)}[/]", highlight=False, soft_wrap=True)
        path = build_report(run_dir, None if others else out)
        if others:
            compared = build_comparison(runs, out or run_dir / "report" / "compare")
    except (OSError, ValueError) as e:
        _fail(str(e))
    console.print(f"wrote [bold]{path}[/]", highlight=False, soft_wrap=True)
    if others:
        console.print(f"wrote [bold]{compared}[/]", highlight=False, soft_wrap=True)
    try:
        console.print(upload_report(run_dir, path.parent), highlight=False, soft_wrap=True)
    except Exception as e:  # noqa: BLE001 - any W&B failure (network, unknown run id) is one line
        _fail(f"W&B upload failed (the report is written): {type(e).__name__}: {e}", code=1)


@app.command("sweep")
def sweep_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides for every run.")] = None,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated (run.seed, rollout.seed, data.seed).")] = "0,1,2",
    grid: Annotated[list[str] | None, typer.Option(help="KEY=V1,V2,... (repeatable): every combination is run.")] = None,
    arm: Annotated[list[str] | None, typer.Option(
        help='"NAME: KEY=V KEY=V" (repeatable): a named set of overrides; each arm is crossed with the grid.')] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep folder (default: runs/sweep-<recipe file name>).")] = None,
    target: Annotated[float, typer.Option(help="Greedy accuracy whose first step is reported.")] = 0.7,
    report_only: Annotated[bool, typer.Option("--report-only", help="Only aggregate the runs already there.")] = False,
    baseline: Annotated[str | None, typer.Option(
        help="A grid point's name (an arm, or e.g. type=lpo): also report every other point's change "
             "against its run of the same seed (% shorter, accuracy points).")] = None,
) -> None:
    """Multi-seed A/B: one `ling-rl train` per seed and grid point (one shared DFT start per seed), then
    one report with mean +- std over seeds (final/best ID and OOD accuracy, length, steps to a target,
    collapse and stability) with seed-band and accuracy-vs-length plots."""
    from ling_rl.config import RecipeError
    from ling_rl.commands.sweep import parse_grid, parse_seeds, sweep

    try:
        path = sweep(recipe, overrides or [], parse_seeds(seeds), parse_grid(grid or [], arm),
                     out or Path("runs") / f"sweep-{recipe.stem}", target, report_only,
                     echo=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
                     baseline=baseline)
    except (RecipeError, OSError, ValueError) as e:
        _fail(str(e))
    console.print(f"wrote [bold]{path}[/]", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
