"""The in-memory dataset's own checks: labels in range, no empty class, one label per input."""
import numpy as np
import pytest

from longtail.data.dataset import ArraySplit, LongTailedDataset
from longtail.errors import DataError


def make(train_labels, test_labels, num_classes=3):
    train = ArraySplit(np.zeros((len(train_labels), 1, 2, 2), np.uint8), np.array(train_labels))
    test = ArraySplit(np.zeros((len(test_labels), 1, 2, 2), np.uint8), np.array(test_labels))
    return LongTailedDataset("toy", num_classes, ["a", "b", "c"][:num_classes], train, test)


def test_counts_and_imbalance_factor_come_from_the_training_split():
    data = make([0, 0, 0, 0, 1, 1, 2], [0, 1, 2])
    assert data.class_counts.tolist() == [4, 2, 1] and data.imbalance_factor == 4.0


def test_label_out_of_range_names_the_split_and_the_fix():
    with pytest.raises(DataError, match=r"toy test labels span \[0, 3\] but the dataset has 3 classes.*remap"):
        make([0, 1, 2], [0, 3])


def test_empty_class_is_an_error():
    with pytest.raises(DataError, match=r"classes \[2\] have no training samples"):
        make([0, 0, 1], [0, 1, 2])


def test_inputs_and_labels_must_pair_up():
    with pytest.raises(DataError, match="3 inputs but 2 labels"):
        ArraySplit(np.zeros((3, 4), np.float32), np.array([0, 1]))
