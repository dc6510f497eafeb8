"""Class-count profiles: the published CIFAR-LT numbers and the limits every profile must obey."""
import numpy as np
import pytest

from longtail.data.profiles import build_profile, explicit_profile, exponential_profile, step_profile
from longtail.errors import DataError


def test_cifar10_if100_per_class_counts():
    counts = exponential_profile(5000, 10, 100)
    assert counts.dtype == np.int64
    assert counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize(
    "n_max, num_classes, totals",
    [(5000, 10, [11203, 12406, 13996, 20431]), (500, 100, [9502, 10847, 12608, 19573])],
)
def test_published_totals(n_max, num_classes, totals):
    got = [int(exponential_profile(n_max, num_classes, f).sum()) for f in (200, 100, 50, 10)]
    assert got == totals


def test_exponential_limits():
    counts = exponential_profile(500, 100, 50)
    assert counts[0] == 500 and counts[-1] == 10  # n_max and n_max / IF at the two ends
    assert np.all(np.diff(counts) <= 0)
    assert exponential_profile(300, 7, 1).tolist() == [300] * 7


def test_step_profile():
    assert step_profile(5000, 10, 100).tolist() == [5000] * 5 + [50] * 5
    assert step_profile(500, 4, 10, head_fraction=0.25).tolist() == [500, 50, 50, 50]
    with pytest.raises(DataError, match="head_fraction"):
        step_profile(500, 4, 10, head_fraction=1.0)


def test_explicit_profile():
    out = explicit_profile([7, 3.0, 1])
    assert out.dtype == np.int64 and out.tolist() == [7, 3, 1]
    for bad, msg in (([5, 0], ">= 1"), ([5, 2.5], "whole numbers"), ([[1, 2]], "flat list"), ([4], "flat list")):
        with pytest.raises(DataError, match=msg):
            explicit_profile(bad)


def test_build_profile_dispatch_and_errors():
    assert build_profile("exp", 5000, 10, 100).tolist() == exponential_profile(5000, 10, 100).tolist()
    assert build_profile("step", 5000, 10, 100).tolist() == step_profile(5000, 10, 100).tolist()
    assert build_profile("explicit", 0, 3, 1, counts=[4, 2, 1]).tolist() == [4, 2, 1]
    with pytest.raises(DataError, match="valid kinds: exp, step, explicit"):
        build_profile("exponential", 5000, 10, 100)
    with pytest.raises(DataError, match="needs counts"):
        build_profile("explicit", 5000, 10, 100)
    with pytest.raises(DataError, match="3 entries but the dataset has 10"):
        build_profile("explicit", 5000, 10, 100, counts=[3, 2, 1])
    with pytest.raises(DataError, match="imbalance_factor"):
        exponential_profile(5000, 10, 0.5)
    with pytest.raises(DataError, match="at least 2 classes"):
        exponential_profile(5000, 1, 10)
