"""Runs: resolving a run, its lifecycle (prepare, train, evaluate, record), the results store and locks."""
