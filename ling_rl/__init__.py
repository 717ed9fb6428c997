"""ling-rl: post-training RL for Ling 2.0 Mixture-of-Experts models."""

__version__ = "0.1.0"
