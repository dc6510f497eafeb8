"""Build the dataset a config names (``data:`` section): the dataset registry.

Every dataset is a builder ``f(DataConfig) -> LongTailedDataset | FileDataset`` registered in
:data:`DATASETS` under its ``data.dataset`` name, with ``items`` saying what its items are:
``"images"`` (held in memory), ``"streamed"`` (image files read from disk each epoch) or
``"features"`` (vectors: the run's encoder is the identity, whatever ``model.encoder`` says). A new
dataset registers a builder here (or from its own module) and needs no other change.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..config import DataConfig
from ..errors import ConfigError
from ..registry import Registry
from .dataset import LongTailedDataset

if TYPE_CHECKING:
    from .files import FileDataset

DATASETS = Registry("dataset")
ITEMS = ("images", "streamed", "features")


def register_dataset(name: str, items: str = "images") -> Callable[[Callable], Callable]:
    """Register ``builder(config: DataConfig)`` as ``data.dataset: name`` whose items are ``items``."""
    if items not in ITEMS:
        raise ValueError(f"items must be one of {ITEMS}, got {items!r}")

    def wrap(builder: Callable[[DataConfig], Any]) -> Callable[[DataConfig], Any]:
        builder.items = items
        return DATASETS.register(name)(builder)

    return wrap


def dataset_items(name: str) -> str:
    """What the items of dataset ``name`` are (see the module docstring)."""
    return DATASETS.get(name).items


def _selection(config: DataConfig) -> dict[str, Any]:
    """The CIFAR-LT generation settings, shared by every dataset made long-tailed from a balanced one."""
    return dict(imbalance_factor=config.imbalance_factor, profile=config.profile, rule=config.selection,
                seed=config.selection_seed, val_per_class=config.val_per_class, counts=config.counts)


@register_dataset("digits")
def _digits(config: DataConfig) -> LongTailedDataset:
    from .digits import build_digits_lt

    return build_digits_lt(imbalance_factor=config.imbalance_factor, profile=config.profile,
                           seed=config.selection_seed, val_per_class=config.val_per_class)


@register_dataset("cifar10")
def _cifar10(config: DataConfig) -> LongTailedDataset:
    from .cifar import build_cifar_lt

    return build_cifar_lt(config.root, name="cifar10", download=config.download, **_selection(config))


@register_dataset("cifar100")
def _cifar100(config: DataConfig) -> LongTailedDataset:
    from .cifar import build_cifar_lt

    return build_cifar_lt(config.root, name="cifar100", download=config.download, **_selection(config))


@register_dataset("newsgroups", items="features")
def _newsgroups(config: DataConfig) -> LongTailedDataset:
    from .text import build_newsgroups_lt

    return build_newsgroups_lt(root=config.root, **_selection(config))


@register_dataset("text", items="features")
def _text(config: DataConfig) -> LongTailedDataset:
    from .user import build_text_dataset

    return build_text_dataset(config)


@register_dataset("features", items="features")
def _features(config: DataConfig) -> LongTailedDataset:
    from .user import build_features_dataset

    return build_features_dataset(config)


@register_dataset("prepared")
def _prepared(config: DataConfig) -> LongTailedDataset:
    from .prepared import load_prepared

    if not config.prepared:
        raise ConfigError("data.dataset is 'prepared' but data.prepared names no file")
    return load_prepared(config.prepared)


@register_dataset("splitfile", items="streamed")
def _splitfile(config: DataConfig) -> "FileDataset":
    from .files import load_file_dataset

    return load_file_dataset(config)


DATASETS.register("folder")(_splitfile)  # the same builder: class folders instead of a split file


def load_dataset(config: DataConfig) -> LongTailedDataset | FileDataset:
    """The long-tailed dataset described by ``config`` (a prepared file wins when given);
    ``splitfile`` and ``folder`` give a :class:`FileDataset` (images stay on disk)."""
    if config.prepared:
        return _prepared(config)
    return DATASETS.get(config.dataset)(config)
