"""The plugin contract through a real RewardPool on Ray workers: every plugin variant in one batch."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import PLUGIN_DIR, make_rollouts
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.loading import find_plugin, resolve_rewards
from ling_rl.reward.pool import RewardPool

GROUPS = [
    ("What is 2+10?", "12", ["<think>add</think> 12", "12", "abc"]),
    ("What is 3+4?", "7", ["7", "<think>x</think>7", "seven"]),
    ("Say a number.", None, ["1", "22"]),
]
SPECS = [
    RewardSpec(name="t_length"),
    RewardSpec(name="t_async_length", weight=0.5),
    RewardSpec(name="t_contains", weight=2.0, args={"needle": "think", "score": 3.0}),
    RewardSpec(name="t_longest_in_group"),
    RewardSpec(name="t_scaled", weight=0.0, args={"factor": 3}),
    RewardSpec(name="t_strict"),
    RewardSpec(name=f"{PLUGIN_DIR}/trl_style.py:format_reward", alias="format"),
    RewardSpec(name="trl_style:solution_match", required=False),  # None where a row has no solution
    RewardSpec(name="t_skip_odd", required=False),
    RewardSpec(name="t_with_metrics"),
    RewardSpec(name="t_signal_alarm"),
]


@pytest.fixture(scope="module")
def batch(ray_session: None, sample_plugins: Any) -> tuple[list[Any], Any]:
    rollouts = make_rollouts(GROUPS)
    with RewardPool(SPECS, num_workers=2, worker_cpus=0.25) as pool:
        return pool.score(rollouts)


def column(batch: tuple[list[Any], Any], key: str) -> list[float | None]:
    return [s.breakdown[key] for s in batch[0]]


TEXTS = [c for _, _, completions in GROUPS for c in completions]


def test_sync_and_async_functions(batch: tuple[list[Any], Any]) -> None:
    assert column(batch, "t_length") == [float(len(t)) for t in TEXTS]
    assert column(batch, "t_async_length") == [float(len(t)) for t in TEXTS]


def test_class_plugin_is_built_with_args(batch: tuple[list[Any], Any]) -> None:
    assert column(batch, "t_contains") == [3.0 if "think" in t else 0.0 for t in TEXTS]


def test_function_plugin_receives_args(batch: tuple[list[Any], Any]) -> None:
    assert column(batch, "t_scaled") == [3.0 * len(t) for t in TEXTS]


def test_group_level_plugin_sees_one_group_per_call(batch: tuple[list[Any], Any]) -> None:
    # The plugin asserts that a call holds one prompt; a violation would be a counted failure.
    assert batch[1].plugins["t_longest_in_group"].failures == 0
    assert batch[1].plugins["t_longest_in_group"].calls == len(GROUPS)
    assert column(batch, "t_longest_in_group") == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_signature_without_kwargs_gets_only_its_parameters(batch: tuple[list[Any], Any]) -> None:
    assert batch[1].plugins["t_strict"].failures == 0
    assert column(batch, "t_strict") == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_trl_function_from_file_path_unchanged(batch: tuple[list[Any], Any]) -> None:
    assert column(batch, "format") == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_trl_function_from_dotted_path_gets_dataset_columns(batch: tuple[list[Any], Any]) -> None:
    assert column(batch, "solution_match") == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, None, None]


def test_none_skips_the_plugin_for_that_sample(batch: tuple[list[Any], Any]) -> None:
    expected = [None if len(t) % 2 else 1.0 for t in TEXTS]
    assert column(batch, "t_skip_odd") == expected
    assert batch[1].plugins["t_skip_odd"].skipped == expected.count(None)
    assert batch[1].plugins["t_skip_odd"].mean_score == 1.0


def test_sync_plugins_run_on_the_main_thread(batch: tuple[list[Any], Any]) -> None:
    # signal.signal raises ValueError off the main thread (math-verify depends on this).
    assert batch[1].plugins["t_signal_alarm"].errors == []
    assert column(batch, "t_signal_alarm") == [1.0] * len(TEXTS)


def test_reward_output_metrics_are_averaged_per_plugin(batch: tuple[list[Any], Any]) -> None:
    metrics = batch[1].plugins["t_with_metrics"]
    assert metrics.calls == 2  # 8 rollouts in slices of 4 over 2 workers
    assert metrics.extra == {"batch_size": 4.0}
    assert batch[1].as_dict()["reward/t_with_metrics/batch_size"] == 4.0


def test_total_is_weighted_sum_of_the_scores_that_were_given(batch: tuple[list[Any], Any]) -> None:
    weights = {spec.key: spec.weight for spec in SPECS}
    for scored in batch[0]:
        expected = sum(weights[k] * v for k, v in scored.breakdown.items() if v is not None)
        assert scored.reward == pytest.approx(expected)
        assert not scored.skipped
    # "<think>add</think> 12" by hand: length 21 + 0.5*21 + 2*3 + longest 1 + strict 0 + format 1
    # + solution 1 + skip_odd None (odd length) + with_metrics 1 + signal_alarm 1.
    assert batch[0][0].reward == pytest.approx(21 + 10.5 + 6 + 1 + 0 + 1 + 1 + 1 + 1)


def test_metrics_cover_every_plugin(batch: tuple[list[Any], Any]) -> None:
    metrics = batch[1]
    assert list(metrics.plugins) == [spec.key for spec in SPECS]
    assert metrics.samples == len(TEXTS) and metrics.skipped == 0 and metrics.samples_per_s > 0
    assert all(m.failures == 0 and m.timeouts == 0 for m in metrics.plugins.values())
    assert metrics.plugins["t_length"].mean_score == pytest.approx(sum(map(len, TEXTS)) / len(TEXTS))


SKIP_BATCH = [("p", "1", ["a", "bb", "ccc", "dddd"])]  # t_skip_odd returns None for "a" and "ccc"


@pytest.mark.parametrize(
    ("specs", "skipped", "rewards", "skipped_samples"),
    [
        # sfa + format: a page the weighted plugin could not judge is not trained on its other scores.
        ([RewardSpec(name="t_skip_odd"), RewardSpec(name="t_length", weight=0.5)],
         [True, False, True, False], [0.5, 2.0, 1.5, 3.0], {"t_skip_odd": 2, "t_length": 0}),
        # A weight-0 plugin (logged only) is not required: its None skips nothing.
        ([RewardSpec(name="t_skip_odd", weight=0.0), RewardSpec(name="t_length")],
         [False] * 4, [1.0, 2.0, 3.0, 4.0], {"t_skip_odd": 0, "t_length": 0}),
        # `required: false` on a weighted plugin: its None contributes nothing.
        ([RewardSpec(name="t_skip_odd", weight=2.0, required=False), RewardSpec(name="t_length")],
         [False] * 4, [1.0, 4.0, 3.0, 6.0], {"t_skip_odd": 0, "t_length": 0}),
        # A sample no plugin scored is skipped whatever `required` says.
        ([RewardSpec(name="t_skip_all", required=False), RewardSpec(name="t_skip_odd", weight=2.0, required=False)],
         [True, False, True, False], [0.0, 2.0, 0.0, 2.0], {"t_skip_all": 0, "t_skip_odd": 0}),
    ],
    ids=["required-none-skips", "weight0-none-does-not-skip", "required-false-does-not-skip", "all-none-skips"],
)
def test_none_from_a_required_plugin_skips_the_sample(
    ray_session: None, sample_plugins: Any, specs: list[RewardSpec], skipped: list[bool], rewards: list[float],
    skipped_samples: dict[str, int],
) -> None:
    with RewardPool(specs, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(make_rollouts(SKIP_BATCH))
    assert [s.skipped for s in scored] == skipped
    kept = [s.reward for s in scored if not s.skipped]
    assert kept == [r for r, skip in zip(rewards, skipped) if not skip]
    assert metrics.skipped == skipped.count(True)
    flat = metrics.as_dict()
    for key, count in skipped_samples.items():
        assert metrics.plugins[key].skipped_samples == count
        assert flat[f"reward/{key}/skipped_samples"] == count


def test_a_column_no_row_has_reaches_a_plugin_that_names_it_as_none(ray_session: None, sample_plugins: Any) -> None:
    # A batch drawn only from a source without `solution` (e.g. code tasks beside math ones):
    # the TRL-style plugin that names `solution` gets [None, ...] instead of a TypeError.
    rollouts = [dataclasses.replace(r, sample=dataclasses.replace(r.sample, columns={}))
                for r in make_rollouts(SKIP_BATCH)]
    with RewardPool([RewardSpec(name="trl_style:solution_match"), RewardSpec(name="t_length")],
                    worker_cpus=0.25) as pool:
        scored, metrics = pool.score(rollouts)
    assert metrics.plugins["solution_match"].failures == 0
    assert [s.breakdown["solution_match"] for s in scored] == [None] * 4
    assert all(s.skipped for s in scored)  # solution_match is weighted, so required


def test_async_calls_overlap_inside_one_worker(ray_session: None, sample_plugins: Any) -> None:
    # 8 group calls sleeping 0.5 s each: ~4 s one after another, ~0.5 s when concurrent.
    rollouts = make_rollouts([(f"p{g}", "1", ["x", "y"]) for g in range(8)])
    with RewardPool([RewardSpec(name="t_concurrent")], num_workers=1, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(rollouts)
    assert metrics.plugins["t_concurrent"].calls == 8
    assert [s.reward for s in scored] == [1.0] * 16
    assert metrics.elapsed_s < 3.0  # one after another it could not take less than 4 s


def test_entry_point_plugin(ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real installed distribution: a module plus a dist-info with entry_points.txt on sys.path,
    # added after Ray started (workers must still import it).
    (tmp_path / "ling_ep_demo.py").write_text(textwrap.dedent("""
        def half(completions, **kwargs):
            return [0.5 for _ in completions]
    """))
    dist = tmp_path / "ling_ep_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ling-ep-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ling_rl.rewards]\nep_half = ling_ep_demo:half\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert resolve_rewards([RewardSpec(name="ep_half")])[0].source == "entry point"
    with RewardPool([RewardSpec(name="ep_half")], worker_cpus=0.25) as pool:
        scored, _ = pool.score(make_rollouts([("p", "1", ["a", "b"])]))
    assert [s.reward for s in scored] == [0.5, 0.5]


def test_resolution_forms(sample_plugins: Any) -> None:
    from rewards.exact_answer import exact_answer

    assert find_plugin("exact_answer") == (exact_answer, "registered")
    assert find_plugin("rewards.exact_answer:exact_answer") == (exact_answer, "dotted path")
    assert find_plugin("rewards.exact_answer.exact_answer") == (exact_answer, "dotted path")
    target, source = find_plugin(f"{PLUGIN_DIR}/trl_style.py:format_reward")
    assert source == "file" and target(completions=["<think>a</think> b"]) == [1.0]
    group, = resolve_rewards([RewardSpec(name="t_longest_in_group")])
    assert group.group_level and not group.is_async and not group.is_class
    contains, = resolve_rewards([RewardSpec(name="t_contains", args={"needle": "x"})])
    assert contains.is_class and not contains.group_level
    assert resolve_rewards([RewardSpec(name="t_async_length")])[0].is_async


def test_one_file_named_by_file_and_dotted_path(sample_plugins: Any) -> None:
    # Loading ling_test_rewards.py by file path runs its decorators a second time: that is the same
    # definition again, not a name clash.
    by_file, by_name = resolve_rewards([
        RewardSpec(name=f"{PLUGIN_DIR}/ling_test_rewards.py:length"),
        RewardSpec(name="t_length"),
    ])
    assert by_file.target is not by_name.target
    assert by_file.target(prompts=["p"], completions=["abc"]) == by_name.target(prompts=["p"], completions=["abc"])


def test_a_different_plugin_cannot_take_a_registered_name() -> None:
    from ling_rl.registry import RegistryError
    from ling_rl.reward.registry import reward

    with pytest.raises(RegistryError, match="'exact_answer' is already registered"):
        @reward("exact_answer")
        def impostor(prompts, completions, **columns):  # noqa: ANN001, ANN003, ANN202
            return [1.0] * len(completions)
