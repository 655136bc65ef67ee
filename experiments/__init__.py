"""Seed experiments (``experiments.seeds``, ``experiments.run``) and the CPU-scale benchmark."""
