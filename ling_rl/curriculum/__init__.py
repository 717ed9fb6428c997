"""Evo-CoT curriculum: stages, pass-rate tracking, dynamic sampling, data."""
