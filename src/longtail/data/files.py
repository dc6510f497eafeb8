"""File-backed image datasets (ImageNet-LT, Places-LT, iNaturalist-2018, class folders).

Only the paths and labels are held in memory; DataLoaders decode and transform the images
(``engine.file_source``). :class:`FileDataset` has the attributes the engine reads from a
:class:`~longtail.data.dataset.LongTailedDataset`, with :class:`FileSplit` splits in place of
arrays. Transforms follow the ImageNet-LT convention: RandomResizedCrop + flip + ColorJitter 0.4
for training, Resize(size·256/224) + CenterCrop for evaluation, ImageNet mean/std.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.utils.data
from torchvision import transforms as T

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .augmentations import file_transforms
from .dataset import ClassCountedDataset
from .splitfile import ClassFolderDataset, load_image, read_split_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(eq=False)
class FileSplit(torch.utils.data.Dataset):
    """Images ``root/<path>`` with int64 labels ``y``; items are ``(transform(image), label)``."""

    root: Path
    paths: list[str]
    y: np.ndarray
    image_size: int = 224
    workers: int = 8
    transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_image(self.root / self.paths[index])
        return (image if self.transform is None else self.transform(image)), int(self.y[index])

    def with_transform(self, transform: Callable) -> FileSplit:
        return dataclasses.replace(self, transform=transform)

    def index_select(self, dim: int, index) -> FileSplit:
        """The subset at ``index`` (as stage kinds select from in-memory splits with tensors)."""
        index = np.asarray(torch.as_tensor(index).cpu())
        return dataclasses.replace(self, paths=[self.paths[i] for i in index], y=self.y[index])


@dataclass(eq=False)
class FileDataset(ClassCountedDataset):
    """Train/test(/val) :class:`FileSplit` s plus what describes them (``meta``: the lists' sha256)."""

    name: str
    num_classes: int
    class_names: list[str]
    train: FileSplit
    test: FileSplit
    val: FileSplit | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    meta: dict[str, Any] = field(default_factory=dict)
    is_image = True

    def __post_init__(self) -> None:
        self.check_labels()


def train_transform(image_size: int, mean, std, augment: str = "crop_flip") -> Callable:
    """RandomResizedCrop + flip + ColorJitter 0.4 (+ the augment's own transforms, e.g. a
    RandAugment/AutoAugment policy: ``data.augmentations.AUGMENTATIONS``); ``none``: the evaluation
    transform."""
    policy = file_transforms(augment)
    if policy is None:
        return eval_transform(image_size, mean, std)
    return T.Compose(
        [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4)]
        + policy
        + [T.ToTensor(), T.Normalize(mean, std)]
    )


def eval_transform(image_size: int, mean, std) -> Callable:
    """Resize(image_size·256/224) + CenterCrop(image_size) + normalise."""
    return T.Compose(
        [T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)]
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_first_image(split: FileSplit, what: str) -> None:
    """Fail at load time, not mid-epoch, when ``data.root`` is wrong."""
    if not (split.root / split.paths[0]).is_file():
        raise DataError(
            f"missing image {split.root / split.paths[0]} (the first of {what}); set data.root to the "
            "folder the paths start from"
        )


def load_file_dataset(config: DataConfig) -> FileDataset:
    """The ``splitfile`` or ``folder`` dataset of ``config`` (images are not opened here)."""
    if config.image_size < 1 or config.workers < 0:
        raise ConfigError(f"data.image_size must be >= 1 and data.workers >= 0, got {config.image_size}, {config.workers}")
    root = Path(config.root)
    settings = {"image_size": config.image_size, "workers": config.workers}
    splits: dict[str, FileSplit] = {}
    digests: dict[str, str] = {}
    if config.dataset == "splitfile":
        for split_name in ("train", "test", "val"):
            key = f"{split_name}_list"
            file = getattr(config, key)
            if file is None:
                if split_name == "val":
                    continue
                raise DataError(f"data.dataset 'splitfile' needs data.{key}: a `path label` list (e.g. ImageNet_LT_{split_name}.txt)")
            if not Path(file).is_file():
                raise DataError(f"data.{key}: no split file at {file}; set data.{key} to an existing `path label` list")
            paths, labels = read_split_file(file)
            splits[split_name] = FileSplit(root, paths, labels, **settings)
            digests[split_name] = _sha256(Path(file).read_bytes())
            _check_first_image(splits[split_name], file)
        num_classes = int(splits["train"].y.max()) + 1
        class_names = [str(c) for c in range(num_classes)]
    elif config.dataset == "folder":
        for split_name in ("train", "test", "val"):
            if split_name == "val" and not (root / "val").is_dir():
                continue
            folder = ClassFolderDataset(root / split_name)
            if split_name == "train":
                class_names = folder.classes
            elif folder.classes != class_names:
                raise DataError(f"{root / split_name} has classes {folder.classes[:5]}... but {root / 'train'} has "
                                f"{class_names[:5]}...; every split needs the same class folders")
            paths = [str(Path(p).relative_to(root)) for p, _ in folder.samples]
            splits[split_name] = FileSplit(root, paths, folder.labels, **settings)
            listing = "".join(f"{p} {c}\n" for p, c in zip(paths, folder.labels))
            digests[split_name] = _sha256(listing.encode())
        num_classes = len(class_names)
    else:
        raise ConfigError(f"data.dataset {config.dataset!r} is not file-backed (splitfile, folder)")
    return FileDataset(
        name=root.name or config.dataset,
        num_classes=num_classes,
        class_names=class_names,
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
        meta={"source": config.dataset, "root": str(root), "split_sha256": digests, **settings},
    )
