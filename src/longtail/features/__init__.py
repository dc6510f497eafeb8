"""Feature extraction and caching, class statistics, and feature generators (GLAG, LADC, DC)."""
from .extract import FeatureCache, extract_features
from .gaussian import cholesky_with_jitter, sample_gaussians
from .statistics import ClassStatistics, tukey_transform

__all__ = ["ClassStatistics", "FeatureCache", "cholesky_with_jitter", "extract_features", "sample_gaussians", "tukey_transform"]
