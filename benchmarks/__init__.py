"""Benchmarks: scripts that measure the service and its models and write benchmarks/results/."""
