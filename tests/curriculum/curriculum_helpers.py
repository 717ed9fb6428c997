"""Builders of scored groups for the curriculum tests (no engine, no reward workers)."""

from __future__ import annotations

from ling_rl.types import Rollout, Sample, ScoredRollout


def sample(sample_id: str) -> Sample:
    return Sample(id=sample_id, prompt=f"q{sample_id}", prompt_ids=[1, 2], columns={"answer": "4"})


def group(sample_id: str, index: int, correct: list[float | None], length: int = 3,
          label: str = "exact_answer") -> list[ScoredRollout]:
    """One prompt's responses; `correct` holds each response's `label` score (reward = the score, 0 for None)."""
    s = sample(sample_id)
    return [
        ScoredRollout(
            rollout=Rollout(sample=s, group=index, response_ids=[7] * length, response_text="4", inf_logprobs=[-0.1] * length,
                            finish_reason="stop", policy_version=0),
            reward=score or 0.0, breakdown={label: score}, skipped=score is None,
        )
        for score in correct
    ]
