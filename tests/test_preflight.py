"""Pre-flight checks: settings a later stage cannot run with fail before stage 1 trains."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import longtail.engine.runner as runner
from longtail.config import RunConfig, StageConfig, load_config
from longtail.data.files import FileSplit
from longtail.data.gpu_augment import AutoAugment, RandAugment, random_crop_flip
from longtail.data.mixing import check_mixing, mixup, remix
from longtail.data.augmentations import build_augment
from longtail.engine.stages import (
    SupervisedStage,
    TauNormStage,
    _mixer,
    _set_tau_and_score,
)
from longtail.errors import ConfigError
from longtail.losses import build_loss
from longtail.models.heads import LinearHead, TauNormHead
from tests.conftest import config, tiny_dataset


@pytest.fixture(autouse=True)
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


def fails_before_stage_one(tmp_path, method, *extra, match):
    cfg = config(tmp_path, method, *extra)
    with pytest.raises(ConfigError, match=match):
        runner.run_config(cfg)
    assert not list((tmp_path / method / "seed0").glob("stage0_*.pt")), "stage 1 trained before the error"


# ------------------------------------------------------------------ tau-norm


def test_tau_norm_without_validation_split_fails_before_stage_one(tmp_path):
    fails_before_stage_one(tmp_path, "tau_norm_val", "data.val_per_class=0",
                           match="validation split.*data.val_per_class > 0.*options.tau")


def test_tau_norm_with_a_fixed_tau_needs_no_validation_split():
    stage = StageConfig(kind="tau_norm", options={"tau": 1.0})
    TauNormStage().check(SimpleNamespace(splits={"train": None}), stage)  # no error


def _tau_search(grid):
    """A 2-class head with norms 4 and 1: logits (4^(1-tau) x0, x1), so tau moves the boundary."""
    linear = LinearHead(2, 2)
    linear.fc.weight.data = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    head = TauNormHead(linear)
    # validation: class 0 right iff 4^(1-tau) > 1.5, class 1 right iff 4^(1-tau) < 3 -> tau in (0.21, 0.71)
    val = torch.tensor([[1.0, 1.5], [1.0, 3.0]]), torch.tensor([0, 1])
    # test: class 0 right iff 4^(1-tau) > 0.8, class 1 right iff 4^(1-tau) < 1.5 -> tau in (0.71, 1.16)
    test = torch.tensor([[1.0, 0.8], [1.0, 1.5]]), torch.tensor([0, 1])
    ctx = SimpleNamespace(model=SimpleNamespace(head=head), splits={"val": val}, features=lambda split: val[0])
    stage = StageConfig(kind="tau_norm", options={"grid": grid})
    kind = TauNormStage()
    kind.build(ctx, stage)
    return kind.record()["chosen_tau"], head, test


def test_tau_is_the_validation_argmax_not_the_test_one():
    grid = [0.0, 0.5, 1.0, 1.5]
    chosen, head, test = _tau_search(grid)
    test_best = max(grid, key=lambda tau: _set_tau_and_score(head, tau, *test))
    assert chosen == 0.5 and test_best == 1.0


def test_tau_ties_go_to_the_smaller_tau():
    chosen, _, _ = _tau_search([0.7, 0.0, 0.5, 2.0])  # 0.5 and 0.7 both score 1.0 on validation
    assert chosen == 0.5


# ------------------------------------------------------------------ MaxNorm


@pytest.mark.parametrize("extra, head", [("stages.1.head=lws", "'lws'"), ("model.head=cosine", "'cosine'")])
def test_max_norm_refuses_a_head_it_cannot_cap(tmp_path, extra, head):
    fails_before_stage_one(tmp_path, "wd_maxnorm", extra, match=f"max_norm caps .*use head: linear .*{head}")


# ------------------------------------------------------------------ loss and mixing options


def test_build_loss_names_the_closest_option():
    with pytest.raises(ConfigError, match=r"unknown option 'bta' for loss 'cb_ce' \(did you mean 'beta'\?\); valid: beta"):
        build_loss("cb_ce", class_counts=[5, 3, 2], bta=0.9)


def test_build_loss_drw_lists_its_own_and_its_base_options():
    with pytest.raises(ConfigError, match="'strt_epoch' for loss 'drw'.*'start_epoch'.*valid: base, beta, max_m, normalize, s, start_epoch"):
        build_loss("drw", class_counts=[5, 3, 2], strt_epoch=3)
    with pytest.raises(ConfigError, match="'max_m' for loss 'drw'.*label_smoothing"):  # base ce has no max_m
        build_loss("drw", class_counts=[5, 3, 2], base="ce", max_m=0.5)
    assert build_loss("drw", class_counts=[5, 3, 2], base="ldam", start_epoch=3, max_m=0.4).start_epoch == 3


@pytest.mark.parametrize("extra, match", [
    ("stages.1.mixing={name: mixup, alpah: 1.0}", "stage 'crt': unknown option 'alpah' for mixing 'mixup'.*'alpha'"),
    ("stages.1.mixing={name: mixpu}", "unknown mixing 'mixpu'.*'mixup'"),
    ("stages.1.loss={name: cb_ce, bta: 0.9}", "stage 'crt': unknown option 'bta' for loss 'cb_ce'.*'beta'"),
    ("stages.1.loss={name: cb_cee}", "stage 'crt': unknown loss 'cb_cee'.*'cb_ce'"),
])
def test_a_stage_two_typo_fails_before_stage_one(tmp_path, extra, match):
    fails_before_stage_one(tmp_path, "crt", extra, match=match)


def test_mixing_options_are_checked_by_name_and_value():
    assert check_mixing({"name": "remix", "kappa": 2.0, "tau": 0.4}) == ("remix", {"kappa": 2.0, "tau": 0.4})
    with pytest.raises(ConfigError, match="'kapa' for mixing 'remix'.*'kappa'"):
        _mixer(None, {"name": "remix", "kapa": 3})
    with pytest.raises(ConfigError, match="unknown option 'generator'"):  # not a config option
        check_mixing({"name": "mixup", "generator": None})
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        check_mixing({"name": "mixup", "alpha": 0})
    x, y = torch.zeros(4, 3), torch.arange(4)
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        mixup(x, y, alpha=0.0)
    with pytest.raises(ConfigError, match="kappa"):
        remix(x, y, [1, 1, 1, 1], kappa=0.5)


# ------------------------------------------------------------------ augment settings


def _images():
    return torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("spec, policy", [
    ({"name": "randaugment", "num_ops": 3, "magnitude": 5, "num_magnitude_bins": 11},
     lambda: RandAugment(num_ops=3, magnitude=5, num_magnitude_bins=11)),
    ({"name": "autoaugment", "policy": "svhn"}, lambda: AutoAugment(policy="svhn")),
])
def test_augment_mapping_options_reach_the_policy_applied_before_crop_flip(spec, policy):
    images = _images()
    torch.manual_seed(0)
    got = build_augment(spec, torch.device("cpu"))(images)
    torch.manual_seed(0)
    expected = random_crop_flip(policy()(images))
    torch.manual_seed(0)
    default = build_augment(spec["name"], torch.device("cpu"))(images)  # the string form still works
    assert torch.equal(got, expected) and not torch.equal(got, default)


def test_augment_mapping_in_a_config(tmp_path):
    cfg = config(tmp_path, "ce", "stages.0.augment={name: randaugment, magnitude: 5}", "stages.0.epochs=1")
    assert cfg.stages[0].augment == {"name": "randaugment", "magnitude": 5}
    runner.run_config(cfg)


@pytest.mark.parametrize("spec, match", [
    ({"name": "randaugment", "num_op": 3}, r"unknown option 'num_op' for augment 'randaugment' \(did you mean 'num_ops'\?\)"),
    ({"name": "crop_flip", "padding": 2}, "unknown option 'padding' for augment 'crop_flip'.*valid: \\(none\\)"),
    ("randaugmnt", "unknown augment 'randaugmnt' \\(did you mean 'randaugment'\\?\\)"),
    ({"name": "autoaugment", "policy": "cifar"}, "augment 'autoaugment': unknown AutoAugment policy 'cifar'"),
])
def test_augment_typos_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_augment(spec, torch.device("cpu"))


def test_an_augment_typo_in_stage_two_fails_before_stage_one(tmp_path):
    fails_before_stage_one(tmp_path, "mislas", "stages.1.augment={name: randaugment, magnitud: 5}",
                           match="stage 'las': .*'magnitud'.*'magnitude'")


def test_augment_options_are_refused_for_images_streamed_from_disk():
    streamed = FileSplit(Path("."), ["a.png"], np.zeros(1, dtype=np.int64))
    stage = StageConfig(augment={"name": "randaugment", "num_ops": 1})
    ctx = SimpleNamespace(config=RunConfig(stages=[stage]), splits={"train": (streamed, None)})
    with pytest.raises(ConfigError, match="streams its images from disk: give the augment by name \\(augment: randaugment\\)"):
        SupervisedStage().check(ctx, stage)
    stage.augment = {"name": "randaugment"}  # a name alone is fine
    SupervisedStage().check(ctx, stage)


def test_augment_config_must_be_a_name_or_a_named_mapping():
    with pytest.raises(ConfigError, match="augment must be an augment name or a mapping with a name"):
        load_config(overrides=["stages.0.augment={num_ops: 2}"])


def test_a_loss_that_reads_features_refuses_mixing_before_stage_one(tmp_path):
    fails_before_stage_one(tmp_path, "iwb", "stages.1.mixing={name: mixup, alpha: 1.0}", "stages.1.features=online",
                           match="reads the encoder features.*remove the stage's mixing")


@pytest.mark.parametrize("method, extra", [("ldam", "model.head=linear"), ("ldam_drw", "model.head=linear")])
def test_ldam_on_a_head_other_than_cosine_fails_before_stage_one(tmp_path, method, extra):
    fails_before_stage_one(tmp_path, method, extra, match="is defined on the cosine head; use head: cosine")


def test_a_new_loss_declares_its_head_and_the_engine_checks_it(tmp_path, monkeypatch):
    """A loss's head requirement is a class attribute the pre-flight reads: no engine change."""
    from longtail.losses import LOSSES
    from longtail.losses.ce import CrossEntropyLoss

    class OnLWSOnly(CrossEntropyLoss):
        requires_head = "lws"

    monkeypatch.setitem(LOSSES._items, "ce_on_lws", OnLWSOnly)
    fails_before_stage_one(tmp_path, "ce", "stages.0.loss={name: ce_on_lws}",
                           match="'ce_on_lws' is defined on the lws head; use head: lws")
