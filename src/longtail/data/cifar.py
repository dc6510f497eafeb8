"""CIFAR-10/100 readers and the long-tailed subsets of Cao et al. (2019).

Reads the python-pickle folders ``cifar-10-batches-py/`` and ``cifar-100-python/`` directly,
without torchvision's md5 list (copies with other pickle protocols or placeholder filenames read
the same), and builds CIFAR-10/100-LT exactly as the reference generator of Cao et al. (2019,
"Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss") does.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .dataset import ArraySplit, LongTailedDataset
from .profiles import build_profile
from .safe_pickle import safe_load
from .validation import split_validation

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
SELECTION_RULES = ("shuffle", "first", "replacement")

CIFAR_SPECS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "label_key": "labels",
        "names_key": "label_names",
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
        "num_classes": 100,
    },
}

def _spec(name: str) -> dict[str, Any]:
    try:
        return CIFAR_SPECS[name]
    except KeyError:
        raise DataError(f"unknown CIFAR dataset {name!r}; valid names: {', '.join(CIFAR_SPECS)}") from None


def _read_pickle(path: Path) -> dict[str, Any]:
    """Read one pickled dict; keys become ``str`` whether stored as bytes or str."""
    if not path.is_file():
        raise DataError(f"missing CIFAR file {path}; unpack the dataset archive again or set data.download=true (download=True in Python)")
    try:
        with open(path, "rb") as f:
            obj = safe_load(f, encoding="bytes")  # a tampered download cannot run code
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"corrupt CIFAR file {path} ({e}); delete it and unpack the dataset archive again") from e
    if not isinstance(obj, dict):
        raise DataError(f"corrupt CIFAR file {path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _decode(items) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in items]


def _batch_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``N×3×32×32`` uint8 and labels from one batch file (``data`` as array, list or bytes)."""
    batch = _read_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(
            f"corrupt CIFAR file {path}: keys {sorted(batch)} lack 'data' or {label_key!r}; "
            "is it a batch of the other CIFAR variant?"
        )
    data = batch["data"]
    x = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data)
    if x.dtype != np.uint8:
        if not (np.issubdtype(x.dtype, np.integer) and x.size and x.min() >= 0 and x.max() <= 255):
            raise DataError(f"corrupt CIFAR file {path}: 'data' must hold bytes 0..255, found dtype {x.dtype}")
        x = x.astype(np.uint8)
    y = np.asarray(batch[label_key], dtype=np.int64)
    if x.size != y.size * 3072:
        raise DataError(
            f"corrupt CIFAR file {path}: {x.size} pixel bytes for {y.size} labels "
            f"(expected {y.size} × 3072); unpack the dataset archive again"
        )
    return x.reshape(-1, 3, 32, 32), y


def cifar_folder(root, name: str, download: bool = False) -> Path:
    """The unpacked ``cifar-10-batches-py`` / ``cifar-100-python`` folder under ``root``;
    downloads and unpacks the official tarball (md5-checked) when missing and ``download``."""
    spec = _spec(name)
    folder = Path(root).expanduser() / spec["folder"]
    if not folder.is_dir():
        if not download:
            raise DataError(
                f"{name}: no folder {folder}; unpack {Path(spec['url']).name} into {Path(root).expanduser()} "
                "(it creates that folder) or set data.download=true (download=True in Python)"
            )
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(spec["url"], download_root=str(Path(root).expanduser()), md5=spec["md5"])
    return folder


def load_cifar(root, name: str, train: bool, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 ``N×3×32×32``, channel-first) and int64 labels of a CIFAR split, batches
    concatenated in file order (``data_batch_1..5`` for CIFAR-10 train), as torchvision orders them."""
    spec = _spec(name)
    folder = cifar_folder(root, name, download)
    parts = [_batch_arrays(folder / f, spec["label_key"]) for f in spec["train" if train else "test"]]
    y = np.concatenate([p[1] for p in parts])
    if y.size and (y.min() < 0 or y.max() >= spec["num_classes"]):
        raise DataError(
            f"{name} labels in {folder} span [{y.min()}, {y.max()}], outside 0..{spec['num_classes'] - 1}; "
            "the folder holds another dataset"
        )
    return np.concatenate([p[0] for p in parts]), y


def cifar_class_names(root, name: str) -> list[str]:
    """Class names from the ``batches.meta`` / ``meta`` file."""
    spec = _spec(name)
    path = Path(root).expanduser() / spec["folder"] / spec["meta"]
    meta = _read_pickle(path)
    if spec["names_key"] not in meta:
        raise DataError(f"corrupt CIFAR file {path}: no {spec['names_key']!r} entry; unpack the archive again")
    names = _decode(meta[spec["names_key"]])
    if len(names) != spec["num_classes"]:
        raise DataError(f"corrupt CIFAR file {path}: {len(names)} class names, expected {spec['num_classes']}")
    return names


def select_long_tailed(labels, counts, rule: str = "shuffle", seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset keeping ``counts[c]`` images of class ``c``, classes in label order.

    ``"shuffle"`` is the reference generator of Cao et al. (2019), outcome for outcome:
    ``np.random.seed(seed)`` once, then per class ``idx = np.where(labels == c)[0]``,
    ``np.random.shuffle(idx)``, keep ``idx[:n_c]`` — here with a private
    ``np.random.RandomState(seed)`` so no global state changes. Subsets are nested across IFs.
    ``"first"``: the first ``n_c`` images of each class, unshuffled.
    ``"replacement"``: ``n_c`` draws with replacement per class, from one seeded ``RandomState``.
    """
    if rule not in SELECTION_RULES:
        raise DataError(f"unknown selection rule {rule!r}; valid rules: {', '.join(SELECTION_RULES)}")
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    rng = np.random.RandomState(seed)
    parts = []
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        if rule == "replacement":
            if idx.size == 0:
                raise DataError(f"class {c} has no images to sample from; check the labels")
            parts.append(rng.choice(idx, size=int(n_c), replace=True))
            continue
        if n_c > idx.size:
            raise DataError(
                f"class {c} should keep {n_c} images but only {idx.size} exist; "
                "lower the counts or use rule='replacement'"
            )
        if rule == "shuffle":
            rng.shuffle(idx)
        parts.append(idx[:n_c])
    return np.concatenate(parts).astype(np.int64)


def indices_sha256(indices) -> str:
    """sha256 (hex) of the indices as int64 little-endian bytes: the provenance record of a subset."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def subset_meta(profile: str, imbalance_factor: float, target, rule: str, seed: int, selected, train_idx) -> dict:
    """The provenance record of a long-tailed subset: profile, counts, selection rule and seed,
    and the sha256 of the selected and of the final training indices (they differ when a
    validation split borrowed training images)."""
    return {
        "profile": profile,
        "imbalance_factor": float(imbalance_factor),
        "profile_counts": np.asarray(target).tolist(),
        "rule": rule,
        "seed": int(seed),
        "selected_indices_sha256": indices_sha256(selected),
        "train_indices_sha256": indices_sha256(train_idx),
    }


def build_cifar_lt(
    root,
    name: str = "cifar10",
    imbalance_factor: float = 100,
    profile: str = "exp",
    rule: str = "shuffle",
    seed: int = 0,
    val_per_class: int = 0,
    download: bool = False,
    counts: Sequence[int] | None = None,
) -> LongTailedDataset:
    """CIFAR-10/100-LT (Cao et al. 2019) with the full balanced test set.

    ``n_max`` is the smallest per-class pool of the training split (5,000 / 500 on the real data);
    ``profile`` is ``"exp"``, ``"step"`` or ``"explicit"`` (with ``counts``). With
    ``val_per_class > 0`` a balanced validation split is drawn from the training images the
    subset left out (see :func:`~longtail.data.validation.balanced_validation_split`; how many training images each class
    gave up to it is ``meta["val_policy"]["borrowed_per_class"]``). Normalisation: the mean/std most
    CIFAR-LT code uses, (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010).
    """
    spec = _spec(name)
    x_train, y_train = load_cifar(root, name, train=True, download=download)
    x_test, y_test = load_cifar(root, name, train=False)
    num_classes = spec["num_classes"]
    n_max = int(np.bincount(y_train, minlength=num_classes).min())
    target = build_profile(profile, n_max, num_classes, imbalance_factor, counts=counts)
    selected = select_long_tailed(y_train, target, rule=rule, seed=seed)
    train_idx, val, val_policy = selected, None, None
    if val_per_class:
        val_idx, train_idx, val_policy = split_validation(y_train, selected, val_per_class, seed=seed)
        val_policy["val_indices_sha256"] = indices_sha256(val_idx)
        val = ArraySplit(x_train[val_idx], y_train[val_idx], val_idx)
    folder = Path(root).expanduser() / spec["folder"]
    return LongTailedDataset(
        name=f"{name}-lt",
        num_classes=num_classes,
        class_names=cifar_class_names(root, name),
        train=ArraySplit(x_train[train_idx], y_train[train_idx], train_idx),
        test=ArraySplit(x_test, y_test, np.arange(y_test.size, dtype=np.int64)),
        val=val,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        meta={
            "source": str(folder.resolve()),
            **subset_meta(profile, imbalance_factor, target, rule, seed, selected, train_idx),
            "val_policy": val_policy,
        },
    )
