"""Subset selection from a pool of candidate samples (math only, no I/O)."""

from .selectors import SELECTORS, select_indices

__all__ = ["SELECTORS", "select_indices"]
