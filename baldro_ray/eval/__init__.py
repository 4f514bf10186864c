"""Evaluation: scoring answers under a model, TOFU/MUSE metrics, forgetting balance."""
