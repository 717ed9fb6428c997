"""Learner role: FSDP2 ranks, optimizer and schedule, FP8, checkpoints and HF export."""
