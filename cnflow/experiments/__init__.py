"""Experiments that reproduce the paper's tables and figures; the CLI wraps these functions."""
