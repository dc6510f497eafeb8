"""Split-file and class-folder datasets on tiny generated PNGs, and the real Places-LT train list."""
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.data.splitfile import ClassFolderDataset, SplitFileDataset, read_split_file
from longtail.errors import DataError

SPLITS_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "lt-split-files.tar.xz"


def _png(path: Path, value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (4, 3)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 7)).save(path)


@pytest.fixture
def image_root(tmp_path):
    """root/train/{cat,dog,owl}/...png: 3 cats, 2 dogs, 1 owl (a grey PNG); a train and a val list."""
    root = tmp_path / "images"
    files = [("train/cat/a.png", 0, 10), ("train/cat/b.png", 0, 20), ("train/cat/c d.png", 0, 30),
             ("train/dog/a.png", 1, 40), ("train/dog/b.png", 1, 50), ("train/owl/a.png", 2, 60)]
    for rel, _, value in files:
        _png(root / rel, value, mode="L" if "owl" in rel else "RGB")
    (tmp_path / "train.txt").write_text("".join(f"{rel} {label}\n" for rel, label, _ in files) + "\n")
    (tmp_path / "val.txt").write_text("train/dog/a.png 1\ntrain/owl/a.png 2\n")
    return root


def test_read_split_file(image_root, tmp_path):
    paths, labels = read_split_file(tmp_path / "train.txt")
    assert paths[2] == "train/cat/c d.png"  # the label is the last field; paths may hold spaces
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 2]


@pytest.mark.parametrize(
    "text, message",
    [("a.png 0\nb.png\n", r"bad.txt:2: expected"), ("a.png 0\n\nb.png x\n", r"bad.txt:3: expected"),
     ("a.png -1\n", r"bad.txt:1:"), ("\n\n", "lists no images")],
)
def test_read_split_file_errors(tmp_path, text, message):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_split_file(tmp_path / "bad.txt")


def test_read_split_file_missing(tmp_path):
    with pytest.raises(DataError, match="no split file"):
        read_split_file(tmp_path / "nope.txt")


def test_split_file_dataset(image_root, tmp_path):
    ds = SplitFileDataset(image_root, tmp_path / "train.txt", transform=np.asarray)
    assert len(ds) == 6 and ds.num_classes == 3
    assert ds.class_counts.tolist() == [3, 2, 1] and ds.labels.tolist() == [0, 0, 0, 1, 1, 2]
    image, label = ds[3]
    assert label == 1 and image.shape == (3, 4, 3) and image[0, 0].tolist() == [40, 215, 7]
    grey, _ = ds[5]  # grey PNGs come back as RGB
    assert grey.shape == (3, 4, 3) and grey[1, 2].tolist() == [60, 60, 60]


def test_split_file_dataset_val_uses_train_counts(image_root, tmp_path):
    val = SplitFileDataset(image_root, tmp_path / "val.txt", train_split_file=tmp_path / "train.txt")
    assert len(val) == 2 and val.class_counts.tolist() == [3, 2, 1] and val.num_classes == 3
    (tmp_path / "wide.txt").write_text("train/cat/a.png 7\n")
    with pytest.raises(DataError, match="label 7 but the training split has only 3 classes"):
        SplitFileDataset(image_root, tmp_path / "wide.txt", train_split_file=tmp_path / "train.txt")


def test_split_file_dataset_bad_images(image_root, tmp_path):
    (tmp_path / "gone.txt").write_text("train/cat/zzz.png 0\ntrain/cat/broken.png 0\n")
    (image_root / "train/cat/broken.png").write_bytes(b"not a png")
    ds = SplitFileDataset(image_root, tmp_path / "gone.txt")
    with pytest.raises(DataError, match="missing image .*zzz.png"):
        ds[0]
    with pytest.raises(DataError, match="unreadable image .*broken.png"):
        ds[1]


def test_class_folder_dataset(image_root):
    ds = ClassFolderDataset(image_root / "train", transform=np.asarray)
    assert ds.classes == ["cat", "dog", "owl"] and ds.num_classes == 3
    assert ds.class_counts.tolist() == [3, 2, 1] and ds.labels.tolist() == [0, 0, 0, 1, 1, 2]
    image, label = ds[5]
    assert label == 2 and image.shape == (3, 4, 3) and image[0, 0].tolist() == [60, 60, 60]


def test_class_folder_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="one sub-folder of images per class"):
        ClassFolderDataset(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="one sub-folder of images per class"):
        ClassFolderDataset(tmp_path / "empty")


@pytest.mark.realdata
def test_real_places_lt_train_counts(tmp_path):
    if not SPLITS_TAR.is_file():
        pytest.skip(f"{SPLITS_TAR} is absent")
    with tarfile.open(SPLITS_TAR) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("Places_LT_train.txt"))
        tar.extractall(tmp_path, members=[member], filter="data")
    train_list = next(tmp_path.rglob("Places_LT_train.txt"))
    paths, labels = read_split_file(train_list)
    assert len(paths) == 62500
    ds = SplitFileDataset(tmp_path, train_list)
    assert ds.num_classes == 365 and ds.class_counts.sum() == 62500
    assert ds.class_counts.max() == 4980 and ds.class_counts.min() == 5
