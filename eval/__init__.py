"""Evaluation: full-ranking metrics, baselines, protocols and statistics."""
