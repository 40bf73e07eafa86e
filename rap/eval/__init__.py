"""Scenario suites and the evaluators that run agents over them."""
