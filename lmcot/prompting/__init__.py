"""Prompts: templates, the per-model prompt fitter and the role table."""
