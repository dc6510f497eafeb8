"""Every baseline building block is a named recipe usable from a config (issue 3).

1. Every registered sampler, mixing scheme, augment policy and loss is used by at least one packaged
   recipe (a loss also counts when it is the ``base`` a wrapper such as ``drw`` or ``iwb`` builds), except
   the names listed in ``*_EXEMPT`` below, each with the reason it cannot be a recipe of its own.
2. Every packaged recipe has a CIFAR-10-LT and a CIFAR-100-LT config that starts from it.
3. The single-block recipes load, plan (their sampler, loss, mixing and augment build) and carry the
   settings their header comments state. ``tests/test_recipes_run.py`` trains every packaged recipe for
   one short epoch per stage on the tiny synthetic data, these included (checked below, not repeated).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from longtail.config import load_config, method_names
from longtail.data.augmentations import AUGMENTATIONS, build_augment
from longtail.data.mixing import MIXING, check_mixing
from longtail.data.sampling import SAMPLERS, build_sampler
from longtail.engine.stages import _mixer
from longtail.losses import LOSSES, build_loss

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [m for m in method_names() if m != "digits_default"]

# Registered names that no packaged recipe can use as written, and why.
SAMPLER_EXEMPT = {
    "custom": "its per-class probabilities are a list as long as the data set's class count: a config "
    "for one data set, never a data-set-agnostic recipe",
    "power": "the general form q_c ∝ n_c^q; its published instances are recipes under their own names "
    "(instance q = 1, class_balanced q = 0, sqrt q = 1/2: ce, ce_cbs, ce_sqrt) and no paper fixes another q",
}
LOSS_EXEMPT: dict[str, str] = {}  # every registered loss stands alone or is a wrapper's base in a recipe
MIXING_EXEMPT: dict[str, str] = {}
AUGMENT_EXEMPT: dict[str, str] = {}

# The recipes added for single building blocks: name -> (sampler, loss, mixing, augment) of stage 1.
SINGLE_BLOCK = {
    "ce_drs": ("drs", "ce", None, "crop_flip"),
    "ldam_drs": ("drs", "ldam", None, "crop_flip"),
    "ce_cbs": ("class_balanced", "ce", None, "crop_flip"),
    "ce_sqrt": ("sqrt", "ce", None, "crop_flip"),
    "ce_progressive": ("progressive", "ce", None, "crop_flip"),
    "mixup": ("instance", "ce", "mixup", "crop_flip"),
    "remix": ("instance", "ce", "remix", "crop_flip"),
    "ce_randaugment": ("instance", "ce", None, "randaugment"),
    "ce_autoaugment": ("instance", "ce", None, "autoaugment"),
    "cb_softmax_focal": ("instance", "cb_focal", None, "crop_flip"),
    "wd_maxnorm_cb_bce": ("instance", "ce", None, "crop_flip"),
}
# CIFAR-10-LT IF 100 per-class counts (Cao et al. 2019; /work/shared/docs/conventions.md).
COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _packaged(registry) -> set[str]:
    """A registry's names whose factories the library defines (a test may register its own for
    itself, e.g. through conftest's ``register_loss``)."""
    return {n for n in registry.names() if registry.get(n).__module__.startswith("longtail.")}


def _loss_names(spec: dict) -> set[str]:
    names = {spec["name"]}
    if isinstance(spec.get("base"), str):
        names.add(spec["base"])
    return names


@pytest.fixture(scope="module")
def used() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"sampler": set(), "loss": set(), "mixing": set(), "augment": set()}
    for method in RECIPES:
        for stage in load_config(mapping={"method": method}).stages:
            found["sampler"].add(stage.sampler["name"])
            found["loss"] |= _loss_names(stage.loss)
            found["augment"].add(stage.augment)
            if stage.mixing:
                found["mixing"].add(stage.mixing["name"])
    return found


@pytest.mark.parametrize(
    "family, registered, exempt",
    [
        ("sampler", lambda: _packaged(SAMPLERS), SAMPLER_EXEMPT),
        ("loss", lambda: _packaged(LOSSES), LOSS_EXEMPT),
        ("mixing", lambda: _packaged(MIXING), MIXING_EXEMPT),
        ("augment", lambda: _packaged(AUGMENTATIONS), AUGMENT_EXEMPT),
    ],
)
def test_every_registered_name_is_used_by_a_packaged_recipe(used, family, registered, exempt):
    names = registered()
    assert set(exempt) <= names, f"exempt {family} names that are no longer registered: {set(exempt) - names}"
    missing = names - set(exempt) - used[family]
    assert not missing, f"registered {family} names no packaged recipe uses: {sorted(missing)}"
    needless = set(exempt) & used[family]
    assert not needless, f"exempt {family} names a recipe now uses (drop the exemption): {sorted(needless)}"


@pytest.mark.parametrize("method", RECIPES)
def test_every_recipe_has_a_config_per_cifar_dataset(method):
    for dataset in ("cifar10", "cifar100"):
        path = ROOT / "configs" / f"{dataset}_lt" / f"{method}.yaml"
        assert path.is_file(), f"{method}: no {path.relative_to(ROOT)}"
        config = load_config(path)
        assert config.method == method and config.data.dataset == dataset
        assert config.name == f"{dataset}_lt_{method}"


def test_single_block_recipes_are_run_end_to_end_by_test_recipes_run():
    from tests.test_recipes_run import RECIPES as RUN

    assert set(SINGLE_BLOCK) <= set(RUN)


@pytest.mark.parametrize("method", sorted(SINGLE_BLOCK))
def test_single_block_recipe_loads_and_plans(method):
    sampler, loss, mixing, augment = SINGLE_BLOCK[method]
    config = load_config(mapping={"method": method})
    stage = config.stages[0]
    assert config.name == method and config.model.encoder == "resnet32"
    assert (stage.sampler["name"], stage.loss["name"], stage.augment) == (sampler, loss, augment)
    assert (stage.mixing or {}).get("name") == mixing
    if method != "wd_maxnorm_cb_bce":  # the CIFAR-LT standard recipe (the ce recipe's stage 1)
        assert (stage.epochs, stage.batch_size) == (200, 128)
        assert (stage.optimizer.lr, stage.optimizer.momentum, stage.optimizer.weight_decay) == (0.1, 0.9, 2e-4)
        sched = stage.schedule
        assert (sched.name, sched.warmup_epochs, sched.milestones) == ("multistep", 5, [160, 180])
        assert sched.gamma == (0.01 if method.endswith("_drs") else 0.1)  # DRS: as ce_drw / ldam_drw
    for stage in config.stages:  # plan: every stage's parts build
        strategy = build_sampler(stage.sampler["name"], **{k: v for k, v in stage.sampler.items() if k != "name"})
        q = strategy.class_probabilities(np.array(COUNTS), 0, stage.epochs)
        assert q.shape == (10,) and abs(q.sum() - 1) < 1e-9
        options = {k: v for k, v in stage.loss.items() if k != "name"}
        built = build_loss(stage.loss["name"], class_counts=COUNTS, **options)
        logits, targets = torch.randn(6, 10), torch.arange(6)
        assert torch.isfinite(built(logits, targets))
        if stage.mixing:
            check_mixing(stage.mixing)
            ctx = SimpleNamespace(counts_tensor=lambda: torch.tensor(COUNTS))
            batch = _mixer(ctx, stage.mixing)(torch.randn(6, 3, 8, 8), targets)
            assert batch.lam.shape == (6,)
        policy = build_augment(stage.augment, torch.device("cpu"))
        if policy is not None:
            images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
            assert policy(images).shape == images.shape


def test_drs_recipes_switch_to_class_balanced_sampling_at_epoch_160():
    for method in ("ce_drs", "ldam_drs"):
        stage = load_config(mapping={"method": method}).stages[0]
        strategy = build_sampler("drs", start_epoch=stage.sampler["start_epoch"])
        assert strategy.is_permutation(159, stage.epochs) and not strategy.is_permutation(160, stage.epochs)
        assert np.allclose(strategy.class_probabilities(np.array(COUNTS), 160, stage.epochs), 0.1)
    assert load_config(mapping={"method": "ldam_drs"}).model.head == "cosine"


def test_derived_recipes_differ_from_their_parents_in_one_block_only():
    def stage1(method):
        stage = load_config(mapping={"method": method}).stages[0]
        return {k: v for k, v in vars(stage).items() if k not in ("sampler", "loss", "mixing", "augment")}

    for method in ("ce_cbs", "ce_sqrt", "ce_progressive", "mixup", "remix", "ce_randaugment",
                   "ce_autoaugment", "cb_softmax_focal"):
        assert stage1(method) == stage1("ce"), method
    assert stage1("ce_drs") == stage1("ce_drw") and stage1("ldam_drs") == stage1("ldam_drw")
    bce, cb = (load_config(mapping={"method": m}) for m in ("wd_maxnorm_cb_bce", "wd_maxnorm_cb"))
    assert bce.stages[1].loss == {"name": "cb_softmax_bce", "beta": 0.9999}
    bce.stages[1].loss = cb.stages[1].loss
    assert bce.stages == cb.stages and bce.model == cb.model
