"""Optuna sweeps whose trials are DVC experiments (`python -m pipeline sweep`)."""
