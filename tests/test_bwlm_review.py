"""BWLM (seed 004) review: BFS against Eq. (13) by hand, the stage-2 counts, options checked before
stage 1 trains, and both stages on images streamed from disk (the ImageNet-LT path)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import longtail.engine.runner as runner
from longtail.config import load_config
from longtail.data.files import FileSplit
from longtail.engine.stages import stage_kind
from longtail.errors import ConfigError
from longtail.losses.bfs import BalancedFocalSoftmaxLoss
from longtail.losses.class_balanced import class_balanced_weights
from longtail.losses.logit_adjust import BalancedSoftmaxLoss

from .conftest import COUNTS, tiny_dataset

REPO = Path(__file__).resolve().parents[1]
ROWS = ["bwlm_ce", "bwlm_cew", "bwlm_cb", "bwlm_cbw", "bwlm_bs", "bwlm_bsw", "bwlm_bfs", "bwlm"]


def tiny_config(tmp_path, *extra):
    return load_config(
        mapping={"method": "bwlm", "name": "bwlm"},
        overrides=[f"output_dir={tmp_path}", "engine.progress=false", "model.encoder=resnet20",
                   "stages.0.epochs=1", "stages.0.batch_size=16", "stages.1.epochs=1", "stages.1.batch_size=16", *extra],
    )


# ------------------------------------------------------------------------------ BFS, Eq. (13)
def test_bfs_is_eq13_with_cb_weights_normalised_to_c():
    counts, alpha, beta, gamma = [500, 50, 5], 0.3, 0.9999, 2.0
    z = np.array([[1.5, -0.5, 0.2], [-1.0, 2.0, 0.5]])
    y = np.array([2, 0])
    raw = (1 - beta) / (1 - beta ** np.array(counts, dtype=float))  # Eq. (5)
    w = raw / raw.sum() * len(counts)  # Cui et al.'s normalisation (documented in bfs.py)
    expected = []
    for zi, yi in zip(z, y):
        log_phi = math.log(counts[yi] * math.exp(zi[yi]) / sum(n * math.exp(v) for n, v in zip(counts, zi)))  # Eq. (9)
        zt = np.where(np.arange(3) == yi, zi, -zi)
        pt = 1 / (1 + np.exp(-zt))
        focal = np.sum((1 - pt) ** gamma * np.log(pt))  # Eq. (7), the sum as printed (negative)
        expected.append((alpha - 1) * log_phi - alpha * w[yi] * focal)  # Eq. (13)
    loss = BalancedFocalSoftmaxLoss(counts, alpha=alpha, beta=beta, gamma=gamma)
    got = loss.per_sample(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert float(loss(torch.tensor(z, dtype=torch.float32), torch.tensor(y))) == pytest.approx(np.mean(expected), rel=1e-5)


# ------------------------------------------------------------------------------ stage 2 counts
@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


def test_review_stage_losses_use_the_counts_of_the_review_set(tmp_path, fake_data):
    """Default loss_counts: review (issue 17): CB and BS weights from D^'s counts, not D's."""
    cfg = tiny_config(tmp_path, "stages.1.loss.alpha=0.5")
    ctx = runner.Run(cfg).build()
    for stage in cfg.stages:
        stage_kind(stage.kind).prepare(ctx, stage)
    stage, kind = cfg.stages[1], ctx.kinds[1]
    loss = kind.build(ctx, stage).members[0].hooks[0]
    review = [12, 12, 12, 6]
    assert isinstance(loss, BalancedFocalSoftmaxLoss) and loss.alpha == 0.5
    assert kind.record()["review_class_counts"] == review
    torch.testing.assert_close(loss.cb_focal.class_weights, class_balanced_weights(review, 0.9999))
    torch.testing.assert_close(loss.balanced_softmax.log_counts, torch.log(torch.tensor(review, dtype=torch.float32)))
    assert ctx.class_counts.tolist() == COUNTS, "evaluation keeps the full counts"


def _fitted_biases(loss, labels: torch.Tensor) -> torch.Tensor:
    """The minimiser b of mean_i loss(b, y_i): a bias-only model (every input gets logits b)."""
    b = torch.zeros(int(labels.max()) + 1, requires_grad=True)
    opt = torch.optim.LBFGS([b], lr=1.0, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss(b.expand(len(labels), -1), labels)
        value.backward()
        return value

    opt.step(closure)
    return b.detach()


def test_balanced_softmax_with_the_full_counts_on_a_balanced_set_corrects_the_prior_twice():
    """The issue's example: 53/53 posts, counts [600, 53]: the bias gap goes to log(53/600) and the
    head class is never predicted; with the counts of the data trained on (53, 53) the gap is 0."""
    labels = torch.tensor([0] * 53 + [1] * 53)
    twice = _fitted_biases(BalancedSoftmaxLoss([600, 53]), labels)
    assert float(twice[0] - twice[1]) == pytest.approx(math.log(53 / 600), abs=1e-4)
    assert (twice.argmax() != 0).all()
    once = _fitted_biases(BalancedSoftmaxLoss([53, 53]), labels)
    assert float(once[0] - once[1]) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("loss_counts, gaps", [(None, (0.0, 0.0)), ("full", (math.log(12 / 48), math.log(12 / 24)))])
def test_bias_only_review_stage_learns_no_prior_by_default(tmp_path, fake_data, loss_counts, gaps):
    """The stage's own loss on its own review set (counts [12, 12, 12, 6] of D = [48, 24, 12, 6]): a
    bias-only model learns equal biases for the equal-sized classes 0 and 2 by default; with
    loss_counts: full it learns b_0 - b_2 = log(12/48) and b_1 - b_2 = log(12/24), D's prior subtracted
    from balanced data."""
    extra = ["stages.1.loss={name: balanced_softmax}"]
    if loss_counts:
        extra.append(f"stages.1.options.loss_counts={loss_counts}")
    cfg = tiny_config(tmp_path, *extra)
    ctx = runner.Run(cfg).build()
    for stage in cfg.stages:
        stage_kind(stage.kind).prepare(ctx, stage)
    plan = stage_kind("bwlm_review").build(ctx, cfg.stages[1])
    labels = plan.members[0].source.labels.cpu()
    assert torch.bincount(labels).tolist() == [12, 12, 12, 6]
    b = _fitted_biases(plan.members[0].hooks[0].cpu(), labels)
    assert float(b[0] - b[2]) == pytest.approx(gaps[0], abs=1e-4)
    assert float(b[1] - b[2]) == pytest.approx(gaps[1], abs=1e-4)


# ------------------------------------------------------------------------------ options checked first
@pytest.mark.parametrize("bad", [
    "stages.1.options.loss_counts=reviw",
    "stages.1.options.resample_each_epochs=true",
    "stages.1.options.num_head_classes=4",
    "stages.0.options.num_head_clases=1",
])
def test_bad_options_fail_before_stage1_trains(tmp_path, fake_data, bad):
    with pytest.raises(ConfigError):
        runner.run_config(tiny_config(tmp_path, bad))
    assert not list(tmp_path.rglob("stage0_*.pt")), "stage 1 trained before the option was checked"


def test_both_stages_must_use_one_number_of_head_classes(tmp_path, fake_data):
    """Eq. 2-3 use one m: stage 1's head classes and the review set's must agree."""
    with pytest.raises(ConfigError, match="num_head_classes"):
        runner.run_config(tiny_config(tmp_path, "stages.0.options.num_head_classes=1"))
    assert not list(tmp_path.rglob("stage0_*.pt"))
    with pytest.raises(ConfigError, match="num_head_classes"):
        runner.run_config(tiny_config(tmp_path, "stages.1.options.num_head_classes=1"))


def test_every_ablation_row_and_variant_has_a_config_for_cifar10_and_cifar100():
    for folder in ("cifar10_lt", "cifar100_lt"):
        for method in ROWS + ["bwlm_naive", "bwlm_stage1_all"]:
            cfg = load_config(REPO / "configs" / folder / f"{method}.yaml")
            assert cfg.method == method and cfg.data.dataset == folder.split("_")[0]


# ------------------------------------------------------------------------------ streamed images
@pytest.fixture
def image_lists(tmp_path):
    """train [12, 8, 4, 3] / test 4 per class, 32x32 PNGs listed as ``path label``."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split, counts in (("train", [12, 8, 4, 3]), ("test", [4] * 4)):
        lines = []
        for label, count in enumerate(counts):
            for i in range(count):
                rel = f"{split}/c{label}/{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                pixels = np.clip(40 * label + rng.integers(0, 80, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / rel)
                lines.append(f"{rel} {label}\n")
        (tmp_path / f"{split}.txt").write_text("".join(lines))
    return tmp_path


def file_config(tmp_path, *extra):
    return load_config(
        mapping={"method": "bwlm", "name": "files", "output_dir": str(tmp_path / "runs"),
                 "data": {"dataset": "splitfile", "root": str(tmp_path / "images"), "train_list": str(tmp_path / "train.txt"),
                          "test_list": str(tmp_path / "test.txt"), "image_size": 32, "workers": 0},
                 "model": {"encoder": "resnet10"}, "eval": {"batch_size": 16}, "engine": {"device": "cpu", "progress": False}},
        overrides=["stages.0.epochs=1", "stages.1.epochs=1", "stages.0.batch_size=8", "stages.1.batch_size=8", *extra],
    )


def test_both_stages_on_streamed_images(image_lists):
    cfg = file_config(image_lists)
    ctx = runner.Run(cfg).build()
    assert isinstance(ctx.splits["train"][0], FileSplit)
    stage1, stage2 = cfg.stages
    kind = stage_kind(stage1.kind)
    kind.prepare(ctx, stage1)
    plan = kind.build(ctx, stage1)
    source = plan.members[0].source
    assert np.bincount(source.loader.dataset.y, minlength=4).tolist() == [12, 8, 0, 0]  # the m = 2 head classes
    results = runner.run_config(cfg)
    assert results["class_counts"] == [12, 8, 4, 3]
    assert results["stage_records"][1]["review_class_counts"] == [4, 4, 4, 3]  # heads at n_{m+1} = 4, tail whole


def test_resampling_streamed_images_is_refused_before_stage1(image_lists):
    cfg = file_config(image_lists, "stages.1.features=online", "stages.1.options.resample_each_epoch=true")
    with pytest.raises(ConfigError, match="features: cached"):
        runner.run_config(cfg)
    assert not list(image_lists.rglob("stage0_*.pt"))
