"""Reward plugin contract, registry and worker pool (built-in plugins live in the top-level rewards package)."""
