"""Numerical illustrations of the theory behind prompt-based continual learning."""
