"""Digits-LT: the no-download default dataset."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from longtail.data.cifar import indices_sha256
from longtail.data.digits import build_digits_lt
from longtail.data.profiles import exponential_profile
from longtail.errors import DataError


@pytest.fixture(scope="module")
def source():
    return load_digits()


def test_splits_and_profile(source):
    ds = build_digits_lt()
    assert ds.name == "digits-lt" and ds.num_classes == 10 and ds.class_names[3] == "3"
    # balanced test: int(0.3 * 174) = 52 per class (174 is the smallest digit class)
    assert np.bincount(ds.test.y).tolist() == [52] * 10
    assert not set(ds.test.indices.tolist()) & set(ds.train.indices.tolist())
    pool = np.bincount(source.target) - 52
    assert ds.class_counts.tolist() == exponential_profile(int(pool.min()), 10, 10).tolist()
    assert ds.class_counts[0] == 122 and ds.class_counts[-1] == 12
    assert ds.val is None and ds.meta["train_indices_sha256"] == indices_sha256(ds.train.indices)
    np.testing.assert_array_equal(ds.train.y, source.target[ds.train.indices])


def test_images_scaled_to_uint8(source):
    ds = build_digits_lt()
    assert ds.train.x.dtype == np.uint8 and ds.train.x.shape[1:] == (1, 8, 8)
    i = ds.test.indices[0]
    np.testing.assert_array_equal(ds.test.x[0, 0], np.rint(source.images[i] * 255 / 16))
    assert ds.train.x.max() == 255 and ds.train.x.min() == 0  # 16 -> 255, 0 -> 0
    pixels = ds.train.x / 255.0
    assert ds.mean == pytest.approx((pixels.mean(),)) and ds.std == pytest.approx((pixels.std(),))


def test_seeded():
    a, b, c = build_digits_lt(seed=0), build_digits_lt(seed=0), build_digits_lt(seed=1)
    np.testing.assert_array_equal(a.train.indices, b.train.indices)
    assert not np.array_equal(a.train.indices, c.train.indices)
    assert not np.array_equal(a.test.indices, c.test.indices)


def test_validation_split():
    ds = build_digits_lt(imbalance_factor=5, val_per_class=6)
    assert np.bincount(ds.val.y).tolist() == [6] * 10
    splits = [set(s.indices.tolist()) for s in (ds.train, ds.val, ds.test)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    borrowed = ds.meta["val_policy"]["borrowed_per_class"]
    full = exponential_profile(122, 10, 5)
    assert ds.class_counts.tolist() == (full - np.array(borrowed)).tolist() and borrowed[-1] == 0


def test_bad_options():
    with pytest.raises(DataError, match="test_fraction"):
        build_digits_lt(test_fraction=1.0)
    with pytest.raises(DataError, match="imbalance_factor"):
        build_digits_lt(imbalance_factor=0.5)
