"""Failures are counted and bounded: raising, malformed, hanging plugins; typos fail up front."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conftest import PLUGIN_DIR, make_rollouts
from ling_rl.curriculum.config import CurriculumConfig
from ling_rl.curriculum.evo_cot import Curriculum
from ling_rl.reward.config import RewardSpec
from ling_rl.reward.loading import RewardResolutionError, resolve_rewards
from ling_rl.reward.pool import RewardPool, RewardWorkerError
from ling_rl.types import Rollout, Sample

ROLLOUTS = make_rollouts([("p0", "1", ["a", "bb"]), ("p1", "2", ["ccc", "dddd"])])


def test_unknown_name_lists_the_options(sample_plugins: Any) -> None:
    with pytest.raises(RewardResolutionError) as err:
        resolve_rewards([RewardSpec(name="exact_answer"), RewardSpec(name="exact_anwser")])
    message = str(err.value)
    assert "unknown reward plugin 'exact_anwser'" in message
    assert "exact_answer" in message and "answer_proximity" in message and "t_length" in message
    assert "pkg.module:func" in message


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("no_such_pkg.rewards:f", {}, "no module 'no_such_pkg.rewards'"),
        ("rewards.exact_answer:exact_anwser", {}, "has no attribute 'exact_anwser'"),
        ("missing/file.py:f", {}, "not found"),
        ("t_strict", {"answr": 2}, "args answr are not parameters"),
        ("t_contains", {"needel": "x"}, "do not fit Contains()"),
        ("t_length", {"completions": []}, "args may not be named completions"),
    ],
)
def test_bad_specs_fail_before_the_run(sample_plugins: Any, name: str, args: dict[str, Any], expected: str) -> None:
    with pytest.raises(RewardResolutionError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        resolve_rewards([RewardSpec(name=name, args=args)])


def test_same_plugin_twice_needs_aliases(sample_plugins: Any) -> None:
    with pytest.raises(RewardResolutionError, match="listed twice"):
        resolve_rewards([RewardSpec(name="t_length"), RewardSpec(name="t_length")])
    keys = [p.key for p in resolve_rewards([RewardSpec(name="t_length"), RewardSpec(name="t_length", alias="len2")])]
    assert keys == ["t_length", "len2"]


def test_raising_and_malformed_plugins_score_error_value(ray_session: None, sample_plugins: Any) -> None:
    """A numeric `error_value` is opted into: failed calls score it (after a retry of each response alone)."""
    specs = [
        RewardSpec(name="t_raises", error_value=-1.0),
        RewardSpec(name="t_wrong_length", error_value=-2.0),
        RewardSpec(name="t_length"),
    ]
    with RewardPool(specs, num_workers=2, worker_cpus=0.25) as pool:
        scored, metrics = pool.score(ROLLOUTS)
    assert [s.breakdown["t_raises"] for s in scored] == [-1.0] * 4
    # t_wrong_length returns one score: wrong for a slice of 2, right for each response retried alone.
    assert [s.breakdown["t_wrong_length"] for s in scored] == [1.0] * 4
    assert [s.breakdown["t_length"] for s in scored] == [1.0, 2.0, 3.0, 4.0]
    assert [s.reward for s in scored] == [1.0, 2.0, 3.0, 4.0]
    assert not any(s.skipped for s in scored)
    raised = metrics.plugins["t_raises"]
    assert raised.failures == raised.calls == 2 + 4 and raised.timeouts == 0
    assert (raised.retried_samples, raised.failed_samples, raised.unscored_samples) == (4, 4, 0)
    assert raised.errors == ["ValueError: plugin exploded on purpose"]
    assert metrics.plugins["t_wrong_length"].errors == ["returned 1 scores for 2 completions"]
    assert metrics.plugins["t_wrong_length"].failed_samples == 0
    assert metrics.as_dict()["reward/t_raises/failures"] == 6


def test_hanging_sync_plugin_times_out_and_pool_recovers(ray_session: None, sample_plugins: Any) -> None:
    rollouts = make_rollouts([("p0", "1", ["a", "hang"]), ("p1", "2", ["ccc", "dddd"])])
    specs = [RewardSpec(name="t_judge", timeout_s=1.0, error_value=-0.5), RewardSpec(name="t_length")]
    with RewardPool(specs, num_workers=1, worker_cpus=0.25, kill_grace_s=0.5) as pool:
        start = time.monotonic()
        scored, metrics = pool.score(rollouts)
    # A hung call is given up at timeout + grace (1.5 s); the batch also waits for replacement
    # workers to start (the slice's, then the retried response's), which on a loaded box takes seconds.
    assert 1.5 <= metrics.plugins["t_judge"].latency_max_s < 2.5
    assert time.monotonic() - start < 120.0
    # The slice of 4 timed out; run again one response each, only the one that hangs scores error_value.
    assert [s.breakdown["t_judge"] for s in scored] == [0.0, -0.5, 0.0, 0.0]
    assert [s.breakdown["t_length"] for s in scored] == [1.0, 4.0, 3.0, 4.0]
    judge = metrics.plugins["t_judge"]
    assert (judge.timeouts, judge.failures, judge.calls, judge.retried_samples) == (2, 0, 5, 4)
    assert metrics.workers_replaced == 2


def test_hanging_async_plugin_times_out_inside_the_worker(ray_session: None, sample_plugins: Any) -> None:
    with RewardPool([RewardSpec(name="t_async_hangs", timeout_s=0.5, error_value=-3.0)], worker_cpus=0.25) as pool:
        scored, metrics = pool.score(ROLLOUTS)
    assert [s.reward for s in scored] == [-3.0] * 4
    assert metrics.plugins["t_async_hangs"].timeouts == 1 + 4  # the slice, then each response alone
    assert metrics.workers_replaced == 0  # cancelled by asyncio, no process killed


def test_a_response_the_correctness_plugin_could_not_judge_is_skipped_not_wrong(
    ray_session: None, sample_plugins: Any
) -> None:
    """Issue 23 item 6: a failed or timed-out call scored 0.0 like a wrong answer, for its whole
    slice, and the curriculum counted those zeros in pass rates. Now the response that hung or broke
    the verifier is unscored (None), skipped, counted, and out of the pass rates; its slice-mates
    are judged on a retry of each alone."""
    rollouts = make_rollouts([("p0", "1", ["right", "hang", "wrong", "right"]),
                              ("p1", "2", ["boom", "right", "wrong", "wrong"])])
    specs = [RewardSpec(name="t_judge", timeout_s=1.0), RewardSpec(name="t_length", weight=0.0)]
    with RewardPool(specs, num_workers=2, worker_cpus=0.25, kill_grace_s=0.5) as pool:
        scored, metrics = pool.score(rollouts)
    assert [s.breakdown["t_judge"] for s in scored] == [1.0, None, 0.0, 1.0, None, 1.0, 0.0, 0.0]
    assert [s.skipped for s in scored] == [False, True, False, False, True, False, False, False]
    judge = metrics.plugins["t_judge"]
    assert (judge.failed_samples, judge.unscored_samples, judge.retried_samples) == (2, 2, 8)
    assert (judge.timeouts, judge.failures, judge.skipped, judge.skipped_samples) == (2, 2, 0, 0)
    assert metrics.skipped == 2
    assert metrics.as_dict()["reward/t_judge/unscored_samples"] == 2

    curriculum = Curriculum(CurriculumConfig(correctness="t_judge"), default_max_tokens=16)
    out = curriculum.update(0, scored)
    assert out["curriculum/counted_responses"] == 6 and out["curriculum/uncounted_responses"] == 2
    assert out["curriculum/accuracy"] == 3 / 6
    assert curriculum.tracker.rate("s0") == 2 / 3 and curriculum.tracker.rate("s1") == 1 / 3


def test_class_plugin_failing_to_initialize_fails_the_pool(ray_session: None, sample_plugins: Any) -> None:
    with pytest.raises(RewardWorkerError, match="cannot load the judge"):
        RewardPool([RewardSpec(name="t_bad_init")], worker_cpus=0.25)


def test_a_pool_started_without_waiting_fails_when_waited_for(ray_session: None, sample_plugins: Any) -> None:
    """`wait=False` (the session starts every role, then waits): the constructor returns at once;
    the failing plugin surfaces in `wait_started`, which also kills the workers."""
    pool = RewardPool([RewardSpec(name="t_bad_init")], worker_cpus=0.25, wait=False)
    with pytest.raises(RewardWorkerError, match="cannot load the judge"):
        pool.wait_started()
    assert pool._workers == []


def test_args_colliding_with_a_dataset_column_fail_loudly(ray_session: None, sample_plugins: Any) -> None:
    sample = Sample(id="s", prompt="p", prompt_ids=[1], columns={"factor": 2})
    rollout = Rollout(sample=sample, group=0, response_ids=[1], response_text="a", inf_logprobs=[0.0],
                      finish_reason="stop", policy_version=0)
    with RewardPool([RewardSpec(name="t_scaled", args={"factor": 3})], worker_cpus=0.25) as pool:
        with pytest.raises(ValueError, match="args key 'factor' collides with the dataset column"):
            pool.score([rollout])


def test_file_plugin_is_resolved_relative_to_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PLUGIN_DIR)
    plugin, = resolve_rewards([RewardSpec(name="trl_style.py:format_reward")])
    assert plugin.source == "file" and plugin.key == "format_reward"


def test_plugin_module_that_fails_to_import_names_the_plugin(tmp_path: Any) -> None:
    (tmp_path / "broken.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(RewardResolutionError, match=r"reward plugin '.*broken.py:f': executing .*No module named"):
        resolve_rewards([RewardSpec(name=f"{tmp_path}/broken.py:f")])
