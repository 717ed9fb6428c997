"""From scored rollouts to the learner's `TrainBatch`: advantages, unit segmentation, padding.

This is the algorithm-facing half of the driver step; the learner sees only tensors.
"""

from __future__ import annotations

from collections import Counter

import torch

from ling_rl.algorithms import AlgorithmConfig, Segmenter, compute_advantages
from ling_rl.routing import batch_routes
from ling_rl.types import ScoredRollout, TrainBatch


def build_train_batch(scored: list[ScoredRollout], algo: AlgorithmConfig, segmenter: Segmenter | None,
                      pad_id: int, version: int | None = None) -> tuple[TrainBatch, dict[str, float]]:
    """Right-padded prompt+response rows with per-token advantages, unit ids and inference
    log-probs. Skipped samples, and samples left alone in their group by skips when the estimator
    needs pairs (its registered `needs_pairs`), stay in the batch with an empty response mask
    (nothing is trained on them). `version`: the learner's policy version (asynchronous RL), for
    each token's version lag (`TrainBatch.version_lag`)."""
    groups = Counter(s.rollout.group for s in scored if not s.skipped)
    needs_pairs = algo.advantage.needs_pairs
    trainable = [not s.skipped and (not needs_pairs or groups[s.rollout.group] >= 2) for s in scored]
    advantages = torch.zeros(len(scored))
    flat = torch.zeros(len(scored), dtype=torch.bool)
    idx = torch.tensor([i for i, ok in enumerate(trainable) if ok], dtype=torch.long)
    if len(idx):
        rewards = torch.tensor([scored[i].reward for i in idx.tolist()], dtype=torch.float64)
        group_ids = torch.tensor([scored[i].rollout.group for i in idx.tolist()])
        result = compute_advantages(rewards, group_ids, algo.advantage)
        advantages[idx] = result.advantages.float()
        flat[idx] = result.flat

    t = max(len(s.rollout.sample.prompt_ids) + len(s.rollout.response_ids) for s in scored)
    b = len(scored)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    mask = torch.zeros(b, t, dtype=torch.bool)
    inf = torch.zeros(b, t)
    for i, s in enumerate(scored):
        p, r = s.rollout.sample.prompt_ids, s.rollout.response_ids
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        inf[i, len(p) : len(p) + len(r)] = torch.tensor(s.rollout.inf_logprobs)
        if trainable[i]:
            # Only the tokens the model sampled: an episode's tool results are context, not actions.
            sampled = s.rollout.loss_mask
            mask[i, len(p) : len(p) + len(r)] = True if sampled is None else torch.tensor(sampled, dtype=torch.bool)
    unit_ids = segmenter.segment_padded(input_ids, mask) if segmenter is not None else torch.zeros(b, t, dtype=torch.long)
    routes = batch_routes([s.rollout.routed_experts for s in scored],
                          [len(s.rollout.sample.prompt_ids) + len(s.rollout.response_ids) for s in scored], t,
                          [s.rollout.sample.id for s in scored])
    batch = TrainBatch(input_ids=input_ids, response_mask=mask, advantages=advantages[:, None] * mask,
                       unit_ids=unit_ids, inf_logprobs=inf, routed_experts=routes,
                       version_lag=None if version is None else _version_lag(scored, version, t))
    n_groups = len({s.rollout.group for s in scored})
    flat_groups = len({s.rollout.group for s, f in zip(scored, flat.tolist()) if f})
    metrics = {
        "batch/responses": float(b),
        "batch/trained_responses": float(sum(trainable)),
        "batch/flat_group_frac": flat_groups / max(n_groups, 1),
        "batch/response_tokens": float(mask.sum()),
        "advantage/abs_mean": float(advantages[idx].abs().mean()) if len(idx) else 0.0,
    }
    return batch, metrics


def _version_lag(scored: list[ScoredRollout], version: int, t: int) -> torch.Tensor:
    """[B, T]: `version` minus the version of each response token (0 outside the responses)."""
    lag = torch.zeros(len(scored), t, dtype=torch.long)
    for i, s in enumerate(scored):
        p, r = len(s.rollout.sample.prompt_ids), len(s.rollout.response_ids)
        versions = s.rollout.token_versions or [s.rollout.policy_version] * r
        lag[i, p : p + r] = version - torch.tensor(versions, dtype=torch.long)
    return lag
