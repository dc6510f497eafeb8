"""Image datasets listed by split files or laid out as class folders.

ImageNet-LT, Places-LT and iNaturalist-2018 (Liu et al. 2019, "Large-Scale Long-Tailed
Recognition in an Open World"; Van Horn et al. 2018) publish their splits as text files with one
``relative/path label`` per line; images are loaded lazily with PIL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch.utils.data
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from ..errors import DataError


def read_split_file(path) -> tuple[list[str], np.ndarray]:
    """Parse a split file of ``path label`` lines (blank lines skipped; the label is the last
    whitespace-separated field, so paths may contain spaces). Returns ``(paths, int64 labels)``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no split file at {path}; check the path (lists look like ImageNet_LT_train.txt)")
    paths, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.strip().rsplit(maxsplit=1)
            if len(fields) != 2 or not fields[1].isdecimal():
                raise DataError(
                    f"{path}:{number}: expected 'relative/path label' with a non-negative integer label, "
                    f"got {line.strip()!r}; fix or delete that line"
                )
            paths.append(fields[0])
            labels.append(int(fields[1]))
    if not paths:
        raise DataError(f"split file {path} lists no images; it should hold one 'path label' per line")
    return paths, np.asarray(labels, dtype=np.int64)


def load_image(file: Path):
    """The image at ``file`` as an RGB PIL image; a missing or unreadable file is a DataError."""
    try:
        return default_loader(str(file))
    except FileNotFoundError:
        raise DataError(f"missing image {file}; set root to the folder the split file's paths start from") from None
    except OSError as e:
        raise DataError(f"unreadable image {file} ({e}); replace the file or drop its line") from None


class SplitFileDataset(torch.utils.data.Dataset):
    """Images ``root/<path>`` listed in ``split_file``; items are ``(transform(PIL RGB image), label)``.

    ``class_counts`` and ``num_classes`` come from the training split: ``train_split_file`` when
    given (pass it for val/test lists), else ``split_file`` itself.
    """

    def __init__(
        self,
        root,
        split_file,
        transform: Callable | None = None,
        train_split_file=None,
    ):
        self.root = Path(root)
        self.paths, self.labels = read_split_file(split_file)
        self.transform = transform
        train_labels = self.labels if train_split_file is None else read_split_file(train_split_file)[1]
        self.num_classes = int(train_labels.max()) + 1
        self.class_counts = np.bincount(train_labels, minlength=self.num_classes)
        if self.labels.max() >= self.num_classes:
            raise DataError(
                f"{split_file} has label {self.labels.max()} but the training split has only "
                f"{self.num_classes} classes; pass the matching train_split_file"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_image(self.root / self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class ClassFolderDataset(ImageFolder):
    """torchvision's ``ImageFolder`` (``root/<class name>/<image>``, classes sorted by name) with
    ``labels``, ``class_counts`` and ``num_classes`` like :class:`SplitFileDataset`."""

    def __init__(self, root, transform: Callable | None = None):
        try:
            super().__init__(str(root), transform=transform)
        except FileNotFoundError as e:
            raise DataError(
                f"{root}: {e}; a class-folder dataset needs one sub-folder of images per class"
            ) from None
        self.labels = np.asarray(self.targets, dtype=np.int64)
        self.num_classes = len(self.classes)
        self.class_counts = np.bincount(self.labels, minlength=self.num_classes)
