"""Torch-only building blocks: models, parameter groups, schedules, monitors, the exact transform, invariance, BN statistics views, theory, plans."""
