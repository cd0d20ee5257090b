"""Benchmarks of tldr_jax against PyTorch baselines (``python -m benchmarks.run``)."""
