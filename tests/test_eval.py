"""Tests of longtail.eval: metrics by hand on a 3-class example, reports, JSON, plots."""
import json
import math
import os

import numpy as np
import pytest
import torch

from longtail.errors import ConfigError, DataError
from longtail.eval.metrics import (
    ConfusionAccumulator,
    EvalResult,
    class_groups,
    evaluate,
    per_class_accuracy,
    weight_norms,
)
from longtail.eval.plots import plot_confusion, plot_per_class_accuracy, plot_weight_norms
from longtail.eval.report import (
    format_mean_std,
    format_per_class,
    format_report,
    mean_std,
    summarize_seeds,
    write_json,
)

# 8 test samples, 3 classes; logits = log(probabilities) so softmax gives the probabilities back.
# target, probabilities -> prediction, confidence, correct
PROBS = [
    (0, [0.70, 0.20, 0.10]),  # pred 0, conf .70, correct
    (0, [0.90, 0.05, 0.05]),  # pred 0, conf .90, correct
    (0, [0.20, 0.70, 0.10]),  # pred 1, conf .70, wrong
    (1, [0.25, 0.50, 0.25]),  # pred 1, conf .50, correct
    (1, [0.10, 0.20, 0.70]),  # pred 2, conf .70, wrong
    (2, [0.55, 0.15, 0.30]),  # pred 0, conf .55, wrong
    (2, [0.05, 0.05, 0.90]),  # pred 2, conf .90, correct
    (1, [0.05, 0.90, 0.05]),  # pred 1, conf .90, correct
]
TARGETS = torch.tensor([t for t, _ in PROBS])
LOGITS = torch.tensor([p for _, p in PROBS]).log()
COUNTS = np.array([150, 50, 10])  # many, medium, few
CONFUSION = [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
# ECE bins of width 1/15: conf .70 -> bin 10 (3 samples, 1 correct): |1 - 2.1| = 1.1;
# .90 -> bin 13 (3 correct): |3 - 2.7| = 0.3; .50 -> bin 7: |1 - .5| = .5; .55 -> bin 8: |0 - .55| = .55.
ECE = 100 * (1.1 + 0.3 + 0.5 + 0.55) / 8  # 30.625
NLL = -(math.log(0.7) + 3 * math.log(0.9) + 2 * math.log(0.2) + math.log(0.5) + math.log(0.3)) / 8


def test_class_groups_boundaries_and_thresholds():
    assert class_groups([101, 100, 20, 19, 0]).tolist() == ["many", "medium", "medium", "few", "few"]
    assert class_groups([50, 10, 5], many_threshold=40, few_threshold=6).tolist() == ["many", "medium", "few"]
    with pytest.raises(ConfigError, match="few_threshold"):
        class_groups([5], many_threshold=10, few_threshold=20)
    with pytest.raises(DataError, match="non-negative"):
        class_groups([5, -1])


def test_hand_example():
    r = evaluate(LOGITS, TARGETS, COUNTS)
    assert r.confusion == CONFUSION
    assert r.top1 == pytest.approx(62.5)
    assert r.per_class_accuracy == pytest.approx([200 / 3, 200 / 3, 50.0])
    assert (r.many, r.medium, r.few) == pytest.approx((200 / 3, 200 / 3, 50.0))
    assert r.group_sizes == {"many": 1, "medium": 1, "few": 1}
    assert r.ece == pytest.approx(30.625) and r.ece == pytest.approx(ECE)
    assert r.nll == pytest.approx(0.7235942, abs=1e-6) and r.nll == pytest.approx(NLL, rel=1e-6)
    assert r.num_samples == 8 and r.thresholds == {"many": 100, "few": 20}


def test_batches_equal_one_pass_and_reset():
    acc = ConfusionAccumulator(3, "cpu")
    acc.update(LOGITS[:3], TARGETS[:3])
    acc.update(LOGITS[3:].double(), TARGETS[3:])  # any float dtype is accepted
    batched = acc.compute(COUNTS)
    assert batched == evaluate(LOGITS, TARGETS, COUNTS)
    acc.reset()
    with pytest.raises(DataError, match="no samples"):
        acc.compute(COUNTS)


def test_group_mean_is_mean_of_class_accuracies_and_empty_group_is_none():
    # Two many classes with 1 and 3 test samples: group accuracy is (100 + 0)/2 = 50, not 25.
    logits = torch.eye(2)[[0, 0, 0, 0]] * 5  # always predicts class 0
    targets = torch.tensor([0, 1, 1, 1])
    r = evaluate(logits, targets, [500, 200])
    assert r.per_class_accuracy == [100.0, 0.0]
    assert r.many == 50.0 and r.top1 == 25.0
    assert r.medium is None and r.few is None
    assert r.group_sizes == {"many": 2, "medium": 0, "few": 0}


def test_class_without_test_samples_is_none():
    r = evaluate(torch.eye(3)[[0, 1]] * 5, torch.tensor([0, 1]), [150, 50, 10])
    assert r.per_class_accuracy == [100.0, 100.0, None]
    assert r.few is None and r.group_sizes["few"] == 1


def test_bad_input_errors():
    acc = ConfusionAccumulator(3)
    with pytest.raises(DataError, match=r"logits \[B, 3\]"):
        acc.update(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    acc.update(torch.zeros(2, 3), torch.tensor([0, 7]))
    with pytest.raises(DataError, match="outside 0..2"):
        acc.compute(COUNTS)
    with pytest.raises(DataError, match="class_counts has shape"):
        evaluate(LOGITS, TARGETS, [1, 2])


def test_to_dict_round_trip_is_plain_json():
    r = evaluate(LOGITS, TARGETS, [150, 50, 200])  # no few classes -> None
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)  # fails on numpy types or NaN
    assert EvalResult.from_dict(json.loads(text)) == r
    with pytest.raises(DataError, match="unknown keys"):
        EvalResult.from_dict({**d, "extra": 1})


def test_weight_norms():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    np.testing.assert_allclose(weight_norms(w), [5.0, 0.0, 1.0])
    with pytest.raises(DataError, match=r"\[C, D\]"):
        weight_norms(torch.zeros(3))


def test_format_report_and_per_class():
    r = evaluate(LOGITS, TARGETS, COUNTS)
    text = format_report(r, class_names=["cat", "dog", "eel"], title="hand example")
    for expected in ("hand example", "62.50", "66.67", "50.00", "30.6", "Many >100 (1)", "Few <20 (1)", "lowest: eel 50.0"):
        assert expected in text, expected
    assert "\x1b" not in text  # plain text, no colour codes

    counts = np.array([10, 150, 50])  # class 1 largest, then 2, then 0
    table = format_per_class(r, counts, ["cat", "dog", "eel"])
    rows = [line.split() for line in table.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert [row[1] for row in rows] == ["dog", "eel", "cat"]
    assert rows[0] == ["1", "dog", "150", "many", "3", "66.67"]
    assert rows[2] == ["0", "cat", "10", "few", "3", "66.67"]


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "result.json"
    assert write_json(path, {"a": np.float32(1.5), "b": np.arange(3)}) == path
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2]}
    with pytest.warns(UserWarning, match=r"2 value\(s\) are NaN or infinite and are written as null: a, b\[1\]"):
        write_json(path, {"a": float("nan"), "b": [1.0, np.float32("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}  # written, never lost
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp files left
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would make it, not mkstemp's 0600


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_per_class_accuracy_of_a_head_agrees_with_the_evaluation():
    """The head-side score (validation searches) gives the evaluation's per-class accuracy on the
    hand example, as fractions, and 0 for a class without samples."""
    acc = per_class_accuracy(torch.nn.Identity(), LOGITS, TARGETS, 4)
    assert acc.dtype == torch.float32 and acc.shape == (4,)
    assert acc.tolist() == pytest.approx([2 / 3, 2 / 3, 0.5, 0.0])


def test_mean_std_leaves_undefined_values_out():
    assert mean_std([1.0, None, 3.0]) == (2.0, math.sqrt(2))
    assert mean_std([53.3]) == (53.3, 0.0)  # one seed: 0.0, where summarize_seeds says NaN
    assert mean_std([None, None]) == (None, None)


def test_summarize_seeds_sample_std():
    assert summarize_seeds([1.0, 2.0, 3.0]) == (2.0, 1.0)  # ddof=1: sqrt((1 + 0 + 1) / 2)
    mean, std = summarize_seeds([53.3, 54.1])
    assert mean == pytest.approx(53.7) and std == pytest.approx(0.8 / math.sqrt(2))
    assert format_mean_std(mean, std) == "53.70 ± 0.57"
    assert format_mean_std(*summarize_seeds([53.3])) == "53.30 ± n/a"
    with pytest.raises(ValueError, match="non-empty"):
        summarize_seeds([])


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_plots_write_pngs(tmp_path):
    counts = np.array([500, 120, 60, 15, 5])
    runs_acc = {"CE": (counts, [90.0, 70.0, 50.0, 20.0, None]), "IWB": (counts, [85.0, 72.0, 60.0, 40.0, 30.0])}
    runs_norm = {"CE": (counts, [2.0, 1.8, 1.5, 1.1, 0.9]), "IWB": (counts[::-1], [1.2, 1.2, 1.3, 1.3, 1.4])}
    paths = [
        plot_per_class_accuracy(runs_acc, tmp_path / "a" / "acc.png"),
        plot_weight_norms(runs_norm, tmp_path / "b" / "norms.png"),
        plot_confusion(CONFUSION, ["cat", "dog", "eel"], tmp_path / "c" / "conf.png"),
        plot_confusion(np.eye(40, dtype=int), None, tmp_path / "c" / "conf40.png", normalize=False),
    ]
    assert all(_is_png(p) for p in paths)
    with pytest.raises(DataError, match="shape"):
        plot_weight_norms({"x": (counts, [1.0, 2.0])}, tmp_path / "bad.png")
    with pytest.raises(DataError, match="no runs"):
        plot_per_class_accuracy({}, tmp_path / "bad.png")


def test_macro_accuracy_and_f1_by_hand_on_an_imbalanced_test_set():
    """Labels [0]*8 + [1]*2 + [2]*2, predictions: class 0 all right, class 1 one right (one -> 0),
    class 2 both -> 0. Top-1 9/12 = 75; recalls 100, 50, 0 -> macro accuracy 50; F1: class 0
    2*8/(8+11) = 84.21, class 1 2*1/(2+1) = 66.67, class 2 0 -> macro-F1 50.29 (sklearn's value)."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    targets = torch.tensor([0] * 8 + [1] * 2 + [2] * 2)
    predictions = torch.tensor([0] * 8 + [1, 0] + [0, 0])
    acc = ConfusionAccumulator(3)
    acc.update(torch.nn.functional.one_hot(predictions, 3).float(), targets)
    result = acc.compute([100, 30, 5])
    assert result.top1 == pytest.approx(75.0)
    assert result.macro_accuracy == pytest.approx(50.0)
    assert result.macro_f1 == pytest.approx(100 * (16 / 19 + 2 / 3 + 0) / 3)
    assert result.macro_f1 == pytest.approx(100 * f1_score(targets, predictions, average="macro"))
    assert result.macro_accuracy == pytest.approx(100 * balanced_accuracy_score(targets, predictions))
    old = result.to_dict()
    del old["macro_accuracy"], old["macro_f1"]  # results written before these metrics existed still load
    assert EvalResult.from_dict(old).macro_f1 is None


def test_per_class_plot_labels_the_lowest_classes_by_name(tmp_path, monkeypatch):
    import matplotlib.axes

    labelled = []
    real = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", lambda self, text, *a, **k: labelled.append(text) or real(self, text, *a, **k))
    runs = {"ce": ([50, 20, 5, 2], [90.0, 10.0, None, 40.0])}
    plot_per_class_accuracy(runs, tmp_path / "p.png", class_names=["cat", "dog", "emu", "yak"], label_lowest=2)
    assert labelled == ["dog", "yak"] and (tmp_path / "p.png").is_file()
