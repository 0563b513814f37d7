"""Evaluation: judges, prompt suites and metrics."""
