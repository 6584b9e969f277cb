"""Evaluation: per-image metrics, test-set evaluation, model complexity."""
