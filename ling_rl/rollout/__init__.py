"""Rollout role: vLLM engine actors, sampling, weight-sync extension."""
