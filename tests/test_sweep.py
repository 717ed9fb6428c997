"""`ling-rl sweep`: grid and seed parsing, the run plan, resume, and the aggregation over seeds
(on run folders written here; the training runs themselves are `ling-rl train`'s, tested apart)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ling_rl.commands.cli import app
from ling_rl.commands.sweep import (
    DFT_ONLY,
    Combo,
    Setting,
    aggregate,
    collapsed,
    dft_overrides,
    from_dft,
    collect,
    grad_norm_spikes,
    is_done,
    largest_rolling_drop,
    mean_std,
    paired_changes,
    paired_table,
    parse_grid,
    parse_seeds,
    plan,
    write_report,
)
from ling_rl.tracking.report import load_run


def test_grid_is_every_combination_and_seeds_interleave() -> None:
    grid = parse_grid(["algorithm.loss.type=lpo,gspo", "learner.lr=1e-4,2e-4"])
    assert len(grid) == 4 and grid[0] == (Setting("type=lpo", ("algorithm.loss.type=lpo",)),
                                          Setting("lr=1e-4", ("learner.lr=1e-4",)))
    combos = plan([0, 1], grid[:2])
    assert [(c.point_name, c.seed) for c in combos] == [("type=lpo,lr=1e-4", 0), ("type=lpo,lr=2e-4", 0),
                                                        ("type=lpo,lr=1e-4", 1), ("type=lpo,lr=2e-4", 1)]
    assert combos[0].overrides() == ["algorithm.loss.type=lpo", "learner.lr=1e-4", "run.seed=0", "rollout.seed=0",
                                     "data.seed=0"]
    assert parse_grid([]) == [()] and Combo((), 3).point_name == "recipe"
    for bad in (["x"], ["x="], ["a=1", "a=2"]):
        with pytest.raises(ValueError, match="--grid"):
            parse_grid(bad)


def test_arms_are_named_override_sets_crossed_with_the_grid() -> None:
    grid = parse_grid(["algorithm.loss.type=lpo,gspo"], ["off: rewards.2.weight=0", "budget: rewards.2.args.design=budget "
                                                         "learner.lr=2e-4", "recipe:"])
    assert [Combo(p, 0).point_name for p in grid] == ["off,type=lpo", "off,type=gspo", "budget,type=lpo",
                                                       "budget,type=gspo", "recipe,type=lpo", "recipe,type=gspo"]
    assert Combo(grid[2], 1).overrides() == ["rewards.2.args.design=budget", "learner.lr=2e-4",
                                             "algorithm.loss.type=lpo", "run.seed=1", "rollout.seed=1", "data.seed=1"]
    assert Combo(grid[4], 0).overrides() == ["algorithm.loss.type=lpo", "run.seed=0", "rollout.seed=0", "data.seed=0"]
    for bad in (["no colon"], [": x=1"], ["a/b: x=1"], ["a: x"], ["a: x=1", "a: y=2"]):
        with pytest.raises(ValueError, match="--arm"):
            parse_grid([], bad)
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("a", "", "1,1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_stability_measures() -> None:
    assert largest_rolling_drop(np.array([0.0, 1.0, 2.0, 1.0, 0.0, 3.0]), window=1) == 2.0
    assert largest_rolling_drop(np.array([0.0, 1.0, 2.0, 3.0]), window=2) == 0.0
    assert largest_rolling_drop(np.array([4.0, 0.0, 0.0, 4.0]), window=2) == 2.0  # rolling 2, 0, 2
    assert grad_norm_spikes(np.array([1.0, 1.0, 1.0, 3.5, 10.0])) == 2
    assert collapsed(np.array([0.2, 0.6, 0.5, 0.29])) and not collapsed(np.array([0.2, 0.6, 0.3]))
    assert not collapsed(np.array([0.6, 0.1])[::-1]) and not collapsed(np.array([]))  # rising: never
    assert mean_std([0.5, 0.7]) == "0.6 +- 0.14" and mean_std([0.5]) == "0.5 +- 0" and mean_std([]) == "-"


def _write_run(folder: Path, accuracies: list[float], rewards: list[float], grads: list[float]) -> None:
    """Evals every 10 steps (steps 0, 10, ...); one reward and grad norm per step."""
    folder.mkdir(parents=True)
    lines = []
    for step, (reward, grad) in enumerate(zip(rewards, grads)):
        record = {"step": step, "reward/mean": reward, "train/grad_norm": grad, "train/entropy": 0.1,
                  "policy/clip_frac_token": 0.02}
        if step % 10 == 0 and step // 10 < len(accuracies):
            record.update({"eval/accuracy_greedy": accuracies[step // 10],
                           "eval/ood/accuracy_greedy": accuracies[step // 10] / 4,
                           "eval/response_len_greedy": 60.0 - 10 * accuracies[step // 10]})
        lines.append(json.dumps(record))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_aggregate_mean_and_std_over_seeds(tmp_path: Path) -> None:
    grid = parse_grid(["algorithm.loss.type=lpo,gspo"])
    combos = plan([0, 1], grid)
    flat = [1.0] * 21
    _write_run(combos[0].run_dir(tmp_path), [0.4, 0.8, 0.6], [0.1] * 21, flat)            # lpo seed 0
    _write_run(combos[2].run_dir(tmp_path), [0.4, 0.6, 0.8], [0.1] * 21, flat)            # lpo seed 1
    _write_run(combos[1].run_dir(tmp_path), [0.4, 0.5, 0.5], [1.0] * 10 + [0.0] * 11,     # gspo seed 0
               flat[:20] + [9.0])
    runs, missing = collect(tmp_path, combos)
    assert missing == [str(combos[3].run_dir(tmp_path))]  # gspo seed 1 never ran
    assert [len(v) for v in runs.values()] == [2, 1]
    table = {row[0]: row[1:] for row in aggregate(runs, target=0.7)}
    assert table["measure"] == ["type=lpo (2 seeds)", "type=gspo (1 seeds)"]
    assert table["final eval/accuracy_greedy"] == ["0.7 +- 0.14", "0.5 +- 0"]
    assert table["best eval/accuracy_greedy"] == ["0.8 +- 0", "0.5 +- 0"]
    assert table["final eval/ood/accuracy_greedy"] == ["0.175 +- 0.035", "0.125 +- 0"]
    assert table["final eval/response_len_greedy"] == ["53 +- 1.4", "55 +- 0"]
    assert table["final eval/units_greedy"] == ["- (0 of 2)", "- (0 of 1)"]  # not logged by these runs
    assert table["steps to eval/accuracy_greedy >= 0.7"] == ["15 +- 7.1", "- (0 of 1)"]
    assert table["largest drop of the 5-step rolling reward"] == ["0 +- 0", "1 +- 0"]
    assert table["grad-norm spikes (> 3x median)"] == ["0 +- 0", "1 +- 0"]
    assert table["collapsed (ID greedy < 0.5 x its best, later)"] == ["0 +- 0", "0 +- 0"]
    md = write_report(tmp_path, runs, 0.7, missing).read_text()
    assert "| final eval/accuracy_greedy | 0.7 +- 0.14 | 0.5 +- 0 |" in md and "gspo/seed-1" not in md.split("|")[0]
    assert (tmp_path / "sweep_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "sweep_frontier.png").read_bytes()[:4] == b"\x89PNG" and "sweep_frontier.png" in md


def test_paired_against_a_baseline_by_seed(tmp_path: Path) -> None:
    """Each point's run minus the baseline's run of the same seed; a seed the baseline lacks is left out."""
    combos = plan([0, 1, 2], parse_grid([], ["off: rewards.2.weight=0", "short: rewards.2.args.design=budget"]))
    dirs = {(c.point_name, c.seed): c.run_dir(tmp_path) for c in combos}
    flat = [1.0] * 11
    # length = 60 - 10 x accuracy: off ends at 0.5 (55 tokens) / 0.2 (58); short at 0.4 (56) / 0.3 (57) / 0.9.
    _write_run(dirs["off", 0], [0.3, 0.5], [0.1] * 11, flat)
    _write_run(dirs["off", 1], [0.3, 0.2], [0.1] * 11, flat)
    _write_run(dirs["short", 0], [0.3, 0.4], [0.1] * 11, flat)
    _write_run(dirs["short", 1], [0.3, 0.3], [0.1] * 11, flat)
    _write_run(dirs["short", 2], [0.3, 0.9], [0.1] * 11, flat)  # no baseline run of seed 2: not paired
    runs, _ = collect(tmp_path, combos)
    table = {row[0]: row[1:] for row in paired_table(paired_changes(runs, "off", target=0.7))}
    assert table["measure"] == ["short (2 seeds)"]
    shorter = [100 * (1 - 56 / 55), 100 * (1 - 57 / 58)]
    assert table["final greedy length: % shorter than off"] == [
        f"{mean_std(shorter)} (seed 0: {shorter[0]:.1f}, seed 1: {shorter[1]:.1f})"]
    assert table["final eval/accuracy_greedy: points above off"] == ["0 +- 14 (seed 0: -10.0, seed 1: 10.0)"]
    assert table["final eval/ood/accuracy_greedy: points above off"] == ["0 +- 3.5 (seed 0: -2.5, seed 1: 2.5)"]
    md = write_report(tmp_path, runs, 0.7, [], baseline="off").read_text()
    assert "## Against off, paired by seed" in md and "(seed 0: -10.0, seed 1: 10.0)" in md
    assert (tmp_path / "sweep_paired.png").read_bytes()[:4] == b"\x89PNG"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    args = ["sweep", str(recipe), "--seeds", "0,1,2", "--arm", "off: rewards.2.weight=0",
            "--arm", "short: rewards.2.args.design=budget", "--out", str(tmp_path), "--report-only"]
    result = CliRunner().invoke(app, [*args, "--baseline", "off"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(app, [*args, "--baseline", "of"])
    assert bad.exit_code == 2 and "--baseline: 'of' is not a grid point" in bad.output and "off, short" in bad.output


def test_done_runs_are_not_run_again(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _write_run(folder, [0.1], [0.0] * 3, [1.0] * 3)
    assert is_done(folder, 3) and not is_done(folder, 4) and not is_done(tmp_path / "none", 1)


def test_cli_report_only_and_bad_grid(tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    combos = plan([0], parse_grid(["algorithm.loss.type=lpo"]))
    _write_run(combos[0].run_dir(tmp_path), [0.3, 0.5], [0.1] * 11, [1.0] * 11)
    result = CliRunner().invoke(app, ["sweep", str(recipe), "--seeds", "0", "--grid", "algorithm.loss.type=lpo",
                                      "--out", str(tmp_path), "--report-only"])
    assert result.exit_code == 0, result.output
    assert "| final eval/accuracy_greedy | 0.5 +- 0 |" in (tmp_path / "sweep.md").read_text()
    bad = CliRunner().invoke(app, ["sweep", str(recipe), "--grid", "algorithm.loss.type=nope", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "nope" in bad.output
    assert load_run(combos[0].run_dir(tmp_path)).records


def test_shared_dft_overrides_are_valid_recipe_keys(tmp_path: Path) -> None:
    """The DFT-only run and the runs started from its export load as recipes (keys exist, types fit)."""
    from ling_rl.config import load_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    dft_run = load_recipe(recipe, DFT_ONLY)
    assert dft_run.run.steps == 1 and dft_run.learner.lr == 1e-12 and dft_run.dft.enabled
    seeded = load_recipe(recipe, dft_overrides(3))
    assert seeded.dft.seed == 3 and seeded.model.seed == 3 and seeded.run.seed == 3 and seeded.data.seed == 3 and seeded.run.steps == 1
    (tmp_path / "dft" / "hf_final").mkdir(parents=True)
    started = load_recipe(recipe, [*from_dft(tmp_path / "dft"), *Combo((), 1).overrides()])
    assert started.model.path == str(tmp_path / "dft" / "hf_final") and started.model.tiny is None
    assert not started.dft.enabled and started.run.seed == 1 and started.rollout.seed == 1
