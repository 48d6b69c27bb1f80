"""A reproducible DVC + MLflow pipeline for PyTorch image classification."""
