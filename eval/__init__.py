"""Evaluation scripts of the paper's table: run them as `python eval/<script>.py` from the repository root."""
