"""Inference: rebuilding a run's network, prediction and export."""
