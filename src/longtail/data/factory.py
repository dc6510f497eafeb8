"""Build the dataset a config names (``data:`` section)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import DataConfig
from ..errors import ConfigError
from ..registry import closest
from .dataset import LongTailedDataset

if TYPE_CHECKING:
    from .files import FileDataset

DATASETS = ("digits", "cifar10", "cifar100", "newsgroups", "text", "features", "prepared", "splitfile", "folder")
FEATURE_DATASETS = ("newsgroups", "text", "features")
"""Datasets whose items are feature vectors: the run's encoder is the identity, whatever model.encoder says."""


def load_dataset(config: DataConfig) -> LongTailedDataset | FileDataset:
    """The long-tailed dataset described by ``config`` (a prepared file wins when given);
    ``splitfile`` and ``folder`` give a :class:`FileDataset` (images stay on disk)."""
    if config.prepared or config.dataset == "prepared":
        from .prepared import load_prepared

        if not config.prepared:
            raise ConfigError("data.dataset is 'prepared' but data.prepared names no file")
        return load_prepared(config.prepared)
    if config.dataset == "digits":
        from .digits import build_digits_lt

        return build_digits_lt(
            imbalance_factor=config.imbalance_factor,
            profile=config.profile,
            seed=config.selection_seed,
            val_per_class=config.val_per_class,
        )
    # the CIFAR-LT generation settings, shared by every dataset made long-tailed from a balanced one
    selection = dict(
        imbalance_factor=config.imbalance_factor,
        profile=config.profile,
        rule=config.selection,
        seed=config.selection_seed,
        val_per_class=config.val_per_class,
        counts=config.counts,
    )
    if config.dataset in ("cifar10", "cifar100"):
        from .cifar import build_cifar_lt

        return build_cifar_lt(config.root, name=config.dataset, download=config.download, **selection)
    if config.dataset == "newsgroups":
        from .text import build_newsgroups_lt

        return build_newsgroups_lt(root=config.root, **selection)
    if config.dataset == "text":
        from .user import build_text_dataset

        return build_text_dataset(config)
    if config.dataset == "features":
        from .user import build_features_dataset

        return build_features_dataset(config)
    if config.dataset in ("splitfile", "folder"):
        from .files import load_file_dataset

        return load_file_dataset(config)
    raise ConfigError(
        f"unknown data.dataset {config.dataset!r}{closest(config.dataset, DATASETS)}; valid: {', '.join(DATASETS)}"
    )
