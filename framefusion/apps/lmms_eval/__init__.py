"""The lmms-eval model `framefusion` (accuracy on a user's own weights) and the reading of its results."""
