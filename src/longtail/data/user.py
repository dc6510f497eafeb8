"""Bring your own long-tailed data: ``data.dataset: text`` (CSV / TSV / JSONL) and ``features``
(pre-computed ``.npy`` / ``.npz``).

Natural data is used as it is (``data.subsample: none``, the default for these datasets) or made
long-tailed by the usual profile (``subsample: profile``). Classes are the sorted distinct training
labels (their names kept end to end). Validation (``val_per_class``) is held out of the training data
itself by :func:`holdout_validation`, since nothing was left out.
"""
from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np

from ..config import data_name
from ..errors import DataError
from .dataset import ArraySplit, LongTailedDataset


def read_records(path: str | Path, header: bool = True) -> list[dict]:
    """Rows of a ``.csv`` / ``.tsv`` (with a header line, or ``header=False``: rows keyed by 0-based
    column position) or ``.jsonl`` (one object a line) file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; set data.train_file / data.test_file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            delimiter = "\t" if suffix == ".tsv" else ","
            if header:
                return list(csv.DictReader(f, delimiter=delimiter))
            return [dict(enumerate(row)) for row in csv.reader(f, delimiter=delimiter) if row]
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    raise DataError(f"{path}: unknown text file type {suffix!r}; use .csv, .tsv or .jsonl")


def has_header(config) -> bool:
    """``data.header``, or when unset (auto): a header line unless the columns are given as positions."""
    if config.header is not None:
        return bool(config.header)
    return not all(isinstance(c, int) for c in (config.text_column, config.label_column, config.split_column)
                   if c is not None)


def _short(value, limit: int = 40) -> str:
    text = str(value).replace("\n", " ")
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _column(rows: list[dict], name, path) -> list:
    """Column ``name`` (a name, or a 0-based position) of ``rows``; a missing one is a short error."""
    if rows and isinstance(name, int) and name not in rows[0]:  # a position in a file with a header line
        keys = list(rows[0])
        name = keys[name] if 0 <= name < len(keys) else name
    if rows and name not in rows[0]:
        cols = list(rows[0])
        shown = ", ".join(_short(c) for c in cols[:8]) + (f" and {len(cols) - 8} more" if len(cols) > 8 else "")
        looks_like_data = any(len(str(c)) > 40 for c in cols)
        hint = ("the first line looks like data, not a header: for a file without a header line set "
                "data.header=false and give 0-based column positions (e.g. data.label_column=0 data.text_column=1)"
                if looks_like_data else "set data.text_column / data.label_column / data.split_column (names or "
                "0-based positions)")
        raise DataError(f"{path}: no column {_short(name)} (columns: {shown}); {hint}")
    try:
        return [r[name] for r in rows]
    except KeyError:
        raise DataError(f"{path}: some rows have no column {_short(name)} (fewer fields than the first row); "
                        "check the delimiter and the quoting") from None


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """Literal ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` written in a text as the characters
    (``data.unescape``); other backslashes and non-ASCII text are kept as written."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


VAL_MAX_FRACTION = 0.2  # a hold-out takes at most this share of a class (holdout_validation)


def holdout_counts(counts, per_class: int, max_fraction: float = VAL_MAX_FRACTION) -> np.ndarray:
    """Validation items per class: ``min(per_class, floor(max_fraction · n_c))``.

    The hold-out never takes most of a class: at most 20 % of it, so a class keeps at least 80 % of
    its items for training, and a class too small to spare one (fewer than 1 / max_fraction = 5
    items) gives none and keeps all of them.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if int(per_class) < 1:
        raise DataError(f"per_class must be a positive number of validation items, got {per_class}")
    if not 0 < max_fraction < 1:
        raise DataError(f"max_fraction must be in (0, 1), got {max_fraction}")
    return np.minimum(int(per_class), np.floor(max_fraction * counts + 1e-9).astype(np.int64))


def holdout_validation(labels, per_class: int, seed: int = 0,
                       max_fraction: float = VAL_MAX_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out from the training data itself; ``(val_indices, train_indices)``.

    Per class in label order with one ``np.random.RandomState(seed)``: a seeded permutation of the
    class's items, the first :func:`holdout_counts` of them to validation. Training keeps source order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    take = holdout_counts(np.bincount(labels), per_class, max_fraction)
    rng = np.random.RandomState(seed)
    val = [rng.permutation(np.flatnonzero(labels == c))[: take[c]] for c in range(take.size)]
    val = np.sort(np.concatenate(val)).astype(np.int64)
    return val, np.setdiff1d(np.arange(labels.size), val).astype(np.int64)


def _holdout(name, names, x_tr, y_tr, source_idx, config):
    """:func:`holdout_validation` as the dataset's validation split, its ``val_policy`` record, and a
    warning naming the classes that gave no item (selection on the split cannot see them)."""
    val_idx, train_idx = holdout_validation(y_tr, config.val_per_class, seed=config.selection_seed)
    val_counts = np.bincount(y_tr[val_idx], minlength=len(names))
    counts = np.bincount(y_tr, minlength=len(names))
    if not val_idx.size:
        raise DataError(
            f"{name}: data.val_per_class={config.val_per_class} held out nothing: a class lends at most "
            f"{VAL_MAX_FRACTION:.0%} of its items and the largest has {counts.max()}; give a validation "
            "set another way or set data.val_per_class=0"
        )
    empty = [names[c] for c in np.flatnonzero(val_counts == 0)]
    if empty:
        shown = ", ".join(f"{names[c]} ({counts[c]})" for c in np.flatnonzero(val_counts == 0)[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        warnings.warn(
            f"{name}: {len(empty)} of {len(names)} classes are too small to lend a validation item (fewer than "
            f"{round(1 / VAL_MAX_FRACTION)} training items; count in brackets): {shown}{more}. They keep all their "
            "items for training; selection on the validation split (eval.select=best_val, ladc beta, glag's "
            "adaptive beta) does not see them.", stacklevel=2,
        )
    policy = {
        "per_class": int(config.val_per_class), "max_fraction": VAL_MAX_FRACTION, "seed": int(config.selection_seed),
        "source": "held out of the training data: per class min(per_class, floor(max_fraction * n_c)) items "
                  "(a seeded permutation), so classes of fewer than 1/max_fraction items give none",
        "val_counts": val_counts.tolist(), "classes_without_val": empty,
    }
    return ArraySplit(x_tr[val_idx], y_tr[val_idx], source_idx[val_idx]), train_idx, policy


def encode_labels(train_labels, test_labels, where: str, order: str = "name") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names and int labels; ``order``: ``name`` (sorted distinct training labels, integers
    numerically) or ``count``
    (largest first, ties by name: 20NG-LT's rule, :func:`text.order_classes`). A test label unseen in
    training is an error naming it (never silently dropped)."""
    train_labels = [str(v) for v in train_labels]
    test_labels = [str(v) for v in test_labels]
    for split, labels in (("training", train_labels), ("test", test_labels)):
        if not labels:
            raise DataError(f"{where}: no {split} rows (an empty file, a header line only, or no rows marked "
                            f"{'train' if split == 'training' else 'test'}); add {split} rows")
    names = sorted(set(train_labels), key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v))
    if order == "count":
        from .text import order_classes

        ids0 = {n: i for i, n in enumerate(names)}
        counts = np.bincount([ids0[v] for v in train_labels], minlength=len(names))
        names = [names[c] for c in order_classes(counts, names, "count")]
    elif order != "name":
        raise DataError(f"data.class_order must be 'name' or 'count', got {order!r}")
    unseen = sorted(set(test_labels) - set(names))
    if unseen:
        raise DataError(
            f"{where}: test classes {unseen} have no training item; add training items or drop those test rows"
        )
    ids = {n: i for i, n in enumerate(names)}
    return names, np.array([ids[v] for v in train_labels], np.int64), np.array([ids[v] for v in test_labels], np.int64)


def _split_rows(config, rows, path):
    """(train rows, test rows) from one file with ``split_column`` or separate train/test files."""
    if config.test_file:
        return rows, read_records(config.test_file, has_header(config))
    if config.split_column is None or config.split_column == "":
        raise DataError(f"{path}: name a test set: data.test_file, or data.split_column (values train/test)")
    split = [str(s).strip().lower() for s in _column(rows, config.split_column, path)]
    bad = sorted(set(split) - {"train", "test", "val"})
    if bad:
        raise DataError(f"{path}: split column {config.split_column!r} has values {bad}; use train, test (or val)")
    return [r for r, s in zip(rows, split) if s == "train"], [r for r, s in zip(rows, split) if s == "test"]


def _select(config, y_train: np.ndarray) -> tuple[np.ndarray, dict]:
    """Training indices: all (``subsample: none``) or a long-tailed profile subset."""
    C = int(y_train.max()) + 1
    counts = np.bincount(y_train, minlength=C)
    if config.subsample == "none":
        return np.arange(y_train.size, dtype=np.int64), {"subsample": "none"}
    if config.subsample != "profile":
        raise DataError(f"data.subsample must be 'none' or 'profile', got {config.subsample!r}")
    from .cifar import select_long_tailed
    from .profiles import build_profile

    target = build_profile(config.profile, int(counts.max()), C, config.imbalance_factor, counts=config.counts)
    target = np.minimum(np.asarray(target), counts)
    sel = select_long_tailed(y_train, target, rule=config.selection, seed=config.selection_seed)
    return np.asarray(sel, np.int64), {"subsample": "profile", "profile": config.profile, "target_counts": list(map(int, target))}


def _left_out_validation(config, y_all, sel):
    """With ``subsample: profile`` the items the subset left out are the validation pool
    (:func:`validation.balanced_validation_split`, as 20NG-LT and CIFAR-LT); ``(val_idx, train_idx)``
    into the source's training rows, or ``(None, sel)``."""
    if config.subsample != "profile" or not config.val_per_class:
        return None, sel
    from .validation import balanced_validation_split

    return balanced_validation_split(y_all, sel, config.val_per_class, seed=config.selection_seed)


def _finish(name, names, x_tr, y_tr, x_te, y_te, config, meta, source_idx, val=None) -> LongTailedDataset:
    """The dataset; ``source_idx``: each training item's position among the source's training rows;
    ``val``: a validation split already drawn from left-out items (else :func:`holdout_validation`)."""
    counts = np.bincount(y_tr, minlength=len(names))
    empty = [names[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{name}: classes {empty} have no training item; add items or drop the class")
    train_idx = np.arange(y_tr.size)
    if val is not None:
        meta["val_policy"] = {"per_class": int(config.val_per_class), "seed": int(config.selection_seed),
                              "source": "training items left out of the long-tailed subset"}
    elif config.val_per_class:
        val, train_idx, meta["val_policy"] = _holdout(name, names, x_tr, y_tr, source_idx, config)
    kept = np.bincount(y_tr[train_idx], minlength=len(names))
    meta.update(train_counts=kept.tolist(), imbalance=float(kept.max() / max(1, kept.min())))
    return LongTailedDataset(
        name=name, num_classes=len(names), class_names=list(names),
        train=ArraySplit(x_tr[train_idx], y_tr[train_idx], source_idx[train_idx]), test=ArraySplit(x_te, y_te, np.arange(y_te.size)),
        val=val, meta=meta,
    )


def make_embedder(name: str):
    """``minilm`` (the packaged all-MiniLM-L6-v2) or any sentence-transformers model name / path."""
    from .text import MiniLMEmbedder

    if name in ("", "minilm"):
        return MiniLMEmbedder()

    class _STEmbedder:
        def __init__(self, model_name):
            self.name, self._model = f"sentence-transformers:{model_name}", None
            self._model_name = model_name

        def __call__(self, texts):
            if self._model is None:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    raise DataError("data.embedder names a sentence-transformers model: `pip install sentence-transformers`") from None
                self._model = SentenceTransformer(self._model_name, device="cpu")
            return np.asarray(self._model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True), np.float32)

    return _STEmbedder(name)


def build_text_dataset(config, embedder=None) -> LongTailedDataset:
    """``data.dataset: text``: ``train_file`` (+ ``test_file`` or ``split_column``), columns
    ``text_column`` / ``label_column``, embedded (cached by content hash, :func:`text.embed_texts`)."""
    from .text import embed_texts

    path = config.train_file
    if not path:
        raise DataError("data.dataset is 'text' but data.train_file names no file")
    rows = read_records(path, has_header(config))
    train_rows, test_rows = _split_rows(config, rows, path)
    for col in (config.text_column, config.label_column):
        _column(train_rows, col, path), _column(test_rows, col, config.test_file or path)
    names, y_all, y_te = encode_labels(
        _column(train_rows, config.label_column, path), _column(test_rows, config.label_column, path), str(path),
        config.class_order,
    )
    sel, sub_meta = _select(config, y_all)
    val_idx, sel = _left_out_validation(config, y_all, sel)
    embedder = embedder or make_embedder(config.embedder)
    clean = unescape if config.unescape else str
    texts = [clean(str(t)) for t in _column(train_rows, config.text_column, path)]
    x_tr, k_tr = embed_texts([texts[i] for i in sel], embedder, config.cache_dir)
    val = None
    if val_idx is not None:
        x_val, _ = embed_texts([texts[i] for i in val_idx], embedder, config.cache_dir)
        val = ArraySplit(x_val, y_all[val_idx], val_idx)
    test_texts = [clean(str(t)) for t in _column(test_rows, config.text_column, config.test_file or path)]
    x_te, k_te = embed_texts(test_texts, embedder, config.cache_dir)
    meta = {"source": str(Path(path).resolve()), "embedder": embedder.name, "feature_dim": int(x_tr.shape[1]),
            "embedding_keys": {"train": k_tr, "test": k_te}, **sub_meta}
    return _finish(data_name(config), names, x_tr, y_all[sel], x_te, y_te, config, meta, sel, val)


def _load_parquet(path: Path) -> dict:
    """A parquet table: a ``labels`` (or ``label``) column, an optional ``split`` column, and the
    features as one list-valued ``features`` column or as all the other numeric columns."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow: pip install 'longtail[parquet]'") from None
    table = pq.read_table(path)
    names = table.column_names
    label = next((n for n in ("labels", "label") if n in names), None)
    if label is None:
        raise DataError(f"{path}: no 'labels' (or 'label') column (columns: {', '.join(names)})")
    out = {"labels": np.asarray(table.column(label).to_pylist())}
    if "split" in names:
        out["split"] = np.asarray(table.column("split").to_pylist())
    if "features" in names:
        column = table.column("features").combine_chunks()
        try:
            out["features"] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1)
        except (AttributeError, ValueError):
            raise DataError(f"{path}: the 'features' column must hold one list of numbers per row, of one length "
                            "(mixed feature dimensions?)") from None
    else:
        rest = [n for n in names if n not in (label, "split")]
        if not rest:
            raise DataError(f"{path}: no feature columns (a list-valued 'features' column, or numeric columns)")
        out["features"] = np.stack([table.column(n).to_numpy() for n in rest], axis=1)
    return out


SAVE_FEATURES = "save the arrays with np.savez(path, features=..., labels=..., split=...)"


def _load_arrays(path) -> dict:
    """The arrays of a features file; nothing in it can run code (no pickles: a dict saved in a
    ``.npy`` is read by :func:`_load_npy_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file {path} does not exist; set data.train_file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except ValueError as exc:  # an array of Python objects: reading it means unpickling
            raise DataError(f"{path} holds arrays of Python objects ({exc}); longtail does not unpickle them (that "
                            f"can run code): {SAVE_FEATURES} from numbers and strings") from None
    if path.suffix == ".parquet":
        return _load_parquet(path)
    if path.suffix == ".npy":  # a saved dict: np.save(path, {"features": ..., "labels": ..., "split": ...})
        return _load_npy_dict(path)
    raise DataError(f"{path}: features must be .npz (np.savez(features=, labels=[, split=])), a .npy dict or .parquet")


def _load_npy_dict(path: Path) -> dict:
    """A dict saved with ``np.save`` (a pickle inside the .npy), unpickled by :mod:`.safe_pickle`:
    numpy arrays and plain values only."""
    import pickle

    from .safe_pickle import safe_load

    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except ValueError as exc:
            raise DataError(f"{path} is not a .npy file ({exc}); {SAVE_FEATURES}") from None
        if dtype != object or shape != ():
            raise DataError(f"{path}: a .npy must hold a dict of features, labels[, split]; {SAVE_FEATURES}")
        try:
            obj = safe_load(f, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{path} was refused: {exc}; {SAVE_FEATURES}") from None
    obj = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a .npy must hold a dict of features, labels[, split]; {SAVE_FEATURES}")
    return obj


def build_features_dataset(config) -> LongTailedDataset:
    """``data.dataset: features``: an ``.npz`` with ``features`` [N, D], ``labels`` [N] and ``split``
    [N] (train/test), or ``train_file`` + ``test_file`` without ``split``."""
    def load(path):
        arr = _load_arrays(path)
        for key in ("features", "labels"):
            if key not in arr:
                raise DataError(f"{path}: no array {key!r} (arrays: {', '.join(arr)}); save features=, labels=")
        x = np.asarray(arr["features"], np.float32)
        if x.ndim != 2:
            raise DataError(f"{path}: features have shape {x.shape}; expected [N, D]")
        y, split = np.asarray(arr["labels"]), arr.get("split")
        for what, values in (("label", y), ("split value", split)):
            if values is not None and len(values) != len(x):
                raise DataError(f"{path}: {len(x)} feature rows but {len(values)} {what}s; give one {what} per "
                                "feature row")
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if bad.size:
            rows = ", ".join(map(str, bad[:10])) + (f" and {bad.size - 10} more" if bad.size > 10 else "")
            raise DataError(f"{path}: {bad.size} feature row(s) hold NaN or inf values (0-based rows {rows}); fix or "
                            "drop those rows (training on them makes the loss NaN)")
        return x, y, split

    x, y, split = load(config.train_file)
    if config.test_file:
        x_te, y_te, _ = load(config.test_file)
        if x_te.shape[1] != x.shape[1]:
            raise DataError(f"mixed feature dimensions: train {x.shape[1]}, test {x_te.shape[1]}; use one encoder")
        x_tr, y_tr = x, y
    else:
        if split is None:
            raise DataError(f"{config.train_file}: no 'split' array and no data.test_file; add one")
        split = np.char.lower(np.asarray(split).astype(str))
        x_tr, y_tr, x_te, y_te = x[split == "train"], y[split == "train"], x[split == "test"], y[split == "test"]
    names, y_all, y_test = encode_labels(y_tr, y_te, str(config.train_file), config.class_order)
    sel, sub_meta = _select(config, y_all)
    val_idx, sel = _left_out_validation(config, y_all, sel)
    val = None if val_idx is None else ArraySplit(x_tr[val_idx], y_all[val_idx], val_idx)
    meta = {"source": str(Path(config.train_file).resolve()), "feature_dim": int(x.shape[1]), **sub_meta}
    return _finish(data_name(config), names, x_tr[sel], y_all[sel], x_te, y_test, config, meta, sel, val)
