"""Benchmarks (not tests): `python -m benchmarks.train_step`."""
