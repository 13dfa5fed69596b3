"""Benchmarks: figures as JSON (and plots), each against a baseline measured in the same run."""
