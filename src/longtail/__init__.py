"""longtail: a fast PyTorch toolkit for long-tailed classification."""

__version__ = "0.1.0"
