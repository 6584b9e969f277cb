"""Execution: the executor contract, run tasks, rank roles, job logs and run status."""
