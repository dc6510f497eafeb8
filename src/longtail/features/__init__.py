"""Feature extraction, class statistics, and feature generators (GLAG, LADC, DC)."""
from .extract import extract_features
from .gaussian import cholesky_with_jitter, sample_factored_gaussians, sample_gaussians
from .statistics import ClassStatistics, FactoredStatistics, inverse_tukey, tukey_transform

__all__ = [
    "ClassStatistics",
    "FactoredStatistics",
    "cholesky_with_jitter",
    "extract_features",
    "inverse_tukey",
    "sample_factored_gaussians",
    "sample_gaussians",
    "tukey_transform",
]
