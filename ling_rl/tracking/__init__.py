"""Metric sinks (W&B, JSONL, console) and report plots."""
