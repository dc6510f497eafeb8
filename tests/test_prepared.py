"""Prepared files: exact round trips, corruption detection, atomic writes, size on real CIFAR-10-LT."""
import time

import numpy as np
import pytest

from longtail.data import prepared
from longtail.data.dataset import ArraySplit, LongTailedDataset
from longtail.data.prepared import load_prepared, save_prepared
from longtail.errors import DataError



def _split(rng, n, shape, num_classes, dtype=np.uint8, indices=True):
    x = rng.randint(0, 256, size=(n, *shape)).astype(dtype) if dtype == np.uint8 else rng.randn(n, *shape).astype(dtype)
    y = np.arange(n) % num_classes
    return ArraySplit(x, y, rng.permutation(10 * n)[:n] if indices else None)


def _dataset(shape=(3, 32, 32), dtype=np.uint8, with_val=True) -> LongTailedDataset:
    rng = np.random.RandomState(0)
    return LongTailedDataset(
        name="toy-lt",
        num_classes=4,
        class_names=["a", "b", "ç", "d d"],
        train=_split(rng, 130, shape, 4, dtype),  # 130 = two full 64-image mosaics and a partial one
        test=_split(rng, 9, shape, 4, dtype, indices=False),
        val=_split(rng, 8, shape, 4, dtype) if with_val else None,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        meta={"profile": "exp", "imbalance_factor": 100.0, "seed": 0, "counts": [5, 3],
              "train_indices_sha256": "ab" * 32, "val_policy": None, "nested": {"x": [1.5, None]}},
    )


def _assert_same(a: LongTailedDataset, b: LongTailedDataset) -> None:
    assert (a.name, a.num_classes, a.class_names, a.mean, a.std, a.meta) == (
        b.name, b.num_classes, b.class_names, b.mean, b.std, b.meta)
    for split in ("train", "val", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert (sa is None) == (sb is None)
        if sa is None:
            continue
        assert sa.x.dtype == sb.x.dtype and sa.x.shape == sb.x.shape
        np.testing.assert_array_equal(sa.x, sb.x)
        np.testing.assert_array_equal(sa.y, sb.y)
        if sa.indices is None:
            assert sb.indices is None
        else:
            np.testing.assert_array_equal(sa.indices, sb.indices)


@pytest.mark.parametrize(
    "shape, dtype, with_val",
    [((3, 32, 32), np.uint8, True), ((1, 8, 8), np.uint8, False), ((2, 5, 5), np.uint8, True), ((16,), np.float32, True)],
)
def test_round_trip_is_exact(tmp_path, shape, dtype, with_val):
    ds = _dataset(shape, dtype, with_val)
    path = save_prepared(ds, tmp_path / "sub" / "toy.ltprep")
    _assert_same(ds, load_prepared(path))
    assert [p.name for p in path.parent.iterdir()] == ["toy.ltprep"]  # no temporary file left behind


def test_codecs_recorded_in_header(tmp_path):
    import json
    import struct

    path = save_prepared(_dataset(), tmp_path / "toy.ltprep")
    raw = path.read_bytes()
    (header_len,) = struct.unpack_from("<I", raw, 44)  # after magic, version and sha256
    arrays = json.loads(raw[48 : 48 + header_len])["arrays"]
    assert arrays["train.x"]["codec"] == "webp-mosaic" and len(arrays["train.x"]["blobs"]) == 3  # 64+64+2
    assert arrays["train.y"]["codec"] == "npy-zlib" and "test.indices" not in arrays


@pytest.mark.parametrize("where", [0.5, 0.999])
def test_flipped_byte_is_detected(tmp_path, where):
    path = save_prepared(_dataset(), tmp_path / "toy.ltprep")
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt or truncated prepared file .*longtail data prepare"):
        load_prepared(path)


def test_truncated_foreign_and_future_files(tmp_path):
    path = save_prepared(_dataset(), tmp_path / "toy.ltprep")
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_prepared(path)
    path.write_bytes(raw[:20])
    with pytest.raises(DataError, match="not a longtail prepared dataset"):
        load_prepared(path)
    path.write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(DataError, match="not a longtail prepared dataset"):
        load_prepared(path)
    path.write_bytes(raw[:8] + (prepared.FORMAT_VERSION + 1).to_bytes(4, "little") + raw[12:])
    with pytest.raises(DataError, match=f"format {prepared.FORMAT_VERSION + 1}"):
        load_prepared(path)
    with pytest.raises(DataError, match="no prepared dataset"):
        load_prepared(tmp_path / "absent.ltprep")


def test_failed_save_keeps_the_old_file(tmp_path):
    path = save_prepared(_dataset(), tmp_path / "toy.ltprep")
    before = path.read_bytes()
    bad = _dataset()
    bad.meta["mean"] = (0.1, 0.2)  # a tuple would come back as a list
    with pytest.raises(DataError, match="does not survive JSON"):
        save_prepared(bad, path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


@pytest.mark.realdata
@pytest.mark.slow
def test_real_cifar10_lt_size_and_round_trip(real_cifar_root, tmp_path):
    from longtail.data.cifar import build_cifar_lt

    ds = build_cifar_lt(real_cifar_root, imbalance_factor=100)
    path = save_prepared(ds, tmp_path / "cifar10-lt-if100.ltprep")
    size_mib = path.stat().st_size / 2**20
    assert size_mib <= 56, f"{size_mib:.1f} MiB"
    start = time.perf_counter()
    back = load_prepared(path)
    assert time.perf_counter() - start < 15
    _assert_same(ds, back)
