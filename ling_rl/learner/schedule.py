"""Learning-rate schedule: linear warm-up, then constant or cosine decay to a floor.

The unit is the RL step (one rollout batch): the learner steps the schedule once per trained
batch, after all its `learner.updates_per_batch` optimizer updates, which share one LR. Skipped
batches (no signal) do not advance it. `total_steps` is `run.steps`."""

from __future__ import annotations

import math

import torch

from ling_rl.learner.config import LearnerConfig


def lr_lambda(cfg: LearnerConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(params, cfg: LearnerConfig, total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=False)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
