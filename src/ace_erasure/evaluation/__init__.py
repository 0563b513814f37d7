"""Evaluation: judges, suites, metrics and the generate-and-judge harness."""
