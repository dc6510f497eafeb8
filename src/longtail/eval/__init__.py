"""Metrics (top-1, many/medium/few, per-class, ECE, confusion), reports and plots."""
from .metrics import ConfusionAccumulator, EvalResult, class_groups, evaluate, weight_norms

__all__ = ["ConfusionAccumulator", "EvalResult", "class_groups", "evaluate", "weight_norms"]
