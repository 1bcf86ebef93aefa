"""Evaluation of trained checkpoints (acceptance benchmark)."""
