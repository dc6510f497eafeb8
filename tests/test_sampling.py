"""Sampling strategies: hand-computed class probabilities, and empirical frequencies of the
index drawers against them (chi-square with fixed seeds)."""
import numpy as np
import pytest
import torch

from longtail.data.sampling import (
    SAMPLERS,
    DeviceIndexDrawer,
    SamplingStrategy,
    StrategySampler,
    build_sampler,
)
from longtail.errors import ConfigError, DataError

COUNTS = np.array([100, 25, 4, 1])
# Chi-square critical values at p = 0.001 for 3 and 9 degrees of freedom.
CHI2_3, CHI2_9 = 16.27, 27.88


def chi_square(observed: np.ndarray, probabilities: np.ndarray) -> float:
    expected = observed.sum() * probabilities
    keep = expected > 0
    assert observed[~keep].sum() == 0, "drew from a class with zero probability"
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def make_labels(counts, seed=0):
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("instance", {}, [100 / 130, 25 / 130, 4 / 130, 1 / 130]),
        ("class_balanced", {}, [0.25] * 4),
        ("sqrt", {}, [10 / 18, 5 / 18, 2 / 18, 1 / 18]),
        ("power", {"q": 2.0}, [10000 / 10642, 625 / 10642, 16 / 10642, 1 / 10642]),
        ("power", {"q": 0.0}, [0.25] * 4),
        ("custom", {"probabilities": [1, 1, 2, 0]}, [0.25, 0.25, 0.5, 0.0]),
    ],
)
def test_class_probabilities_by_hand(name, options, expected):
    q = build_sampler(name, **options).class_probabilities(COUNTS)
    np.testing.assert_allclose(q, expected, rtol=1e-12)
    assert q.sum() == pytest.approx(1.0)


def test_empty_classes_are_never_drawn():
    counts = np.array([5, 0, 5])
    for name, options in [("class_balanced", {}), ("sqrt", {}), ("power", {"q": 0.0}), ("progressive", {})]:
        q = build_sampler(name, **options).class_probabilities(counts, epoch=3, total_epochs=4)
        assert q[1] == 0 and q.sum() == pytest.approx(1.0), name
    with pytest.raises(DataError, match="empty classes"):
        build_sampler("custom", probabilities=[1, 1, 1]).class_probabilities(counts)


def test_progressive_moves_from_instance_to_balanced():
    strategy = build_sampler("progressive")
    instance = COUNTS / COUNTS.sum()
    np.testing.assert_allclose(strategy.class_probabilities(COUNTS, 0, 10), instance)
    np.testing.assert_allclose(strategy.class_probabilities(COUNTS, 5, 10), 0.5 * instance + 0.5 * 0.25)
    np.testing.assert_allclose(strategy.class_probabilities(COUNTS, 10, 10), [0.25] * 4)
    assert not strategy.without_replacement


def test_drs_switches_at_start_epoch():
    strategy = build_sampler("drs")
    assert strategy.start_epoch == 160
    assert strategy.is_permutation(159, 200) and not strategy.is_permutation(160, 200)
    np.testing.assert_allclose(strategy.class_probabilities(COUNTS, 159, 200), COUNTS / 130)
    np.testing.assert_allclose(strategy.class_probabilities(COUNTS, 160, 200), [0.25] * 4)


def test_only_instance_is_without_replacement():
    for name in SAMPLERS:
        options = {"q": 1.0} if name == "power" else {"probabilities": [1]} if name == "custom" else {}
        strategy = build_sampler(name, **options)
        assert isinstance(strategy, SamplingStrategy)
        assert strategy.without_replacement == (name == "instance"), name


def test_build_errors_name_the_fix():
    with pytest.raises(KeyError, match="did you mean 'class_balanced'"):
        build_sampler("class_balance")
    with pytest.raises(ConfigError, match="valid options"):
        build_sampler("sqrt", q=0.3)
    with pytest.raises(ConfigError, match="one probability per class"):
        build_sampler("custom", probabilities=[0.5, 0.5]).class_probabilities(COUNTS)
    with pytest.raises(ConfigError, match="non-negative"):
        build_sampler("custom", probabilities=[0.5, -0.5])
    with pytest.raises(DataError, match="non-negative"):
        build_sampler("instance").class_probabilities(np.array([3, -1]))
    with pytest.raises(DataError, match="num_classes"):
        DeviceIndexDrawer(torch.tensor([0, 1, 4]), 3, "instance")


@pytest.mark.parametrize(
    "name, options", [("class_balanced", {}), ("sqrt", {}), ("power", {"q": 0.25}), ("custom", {"probabilities": [1, 0, 1, 2]})]
)
def test_drawer_class_frequencies_match_strategy(name, options):
    counts = np.array([500, 150, 40, 10])
    labels = torch.from_numpy(make_labels(counts))
    strategy = build_sampler(name, **options)
    drawer = DeviceIndexDrawer(labels, 4, strategy)
    idx = drawer.draw(200_000, epoch=0, generator=torch.Generator().manual_seed(1))
    assert idx.dtype == torch.int64 and idx.shape == (200_000,)
    observed = np.bincount(labels[idx].numpy(), minlength=4)
    assert chi_square(observed, strategy.class_probabilities(counts)) < CHI2_3


def test_drawer_images_uniform_within_class():
    counts = np.array([500, 150, 40, 10])
    labels = torch.from_numpy(make_labels(counts))
    idx = DeviceIndexDrawer(labels, 4, "class_balanced").draw(100_000, 0, torch.Generator().manual_seed(2))
    rare = idx[labels[idx] == 3]
    members = torch.nonzero(labels == 3).flatten()
    observed = np.array([(rare == m).sum().item() for m in members])
    assert chi_square(observed, np.full(10, 0.1)) < CHI2_9


def test_instance_drawer_covers_every_index():
    labels = torch.from_numpy(make_labels([60, 30, 10]))
    drawer = DeviceIndexDrawer(labels, 3, "instance")
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(drawer.draw(100, 0, gen).sort().values, torch.arange(100))
    times = torch.bincount(drawer.draw(250, 0, gen), minlength=100)
    assert times.sum() == 250 and times.min() >= 2 and times.max() <= 3
    head = drawer.draw(40, 0, gen)
    assert head.unique().numel() == 40


def test_drawer_changes_with_epoch():
    counts = np.array([500, 150, 40, 10])
    labels = torch.from_numpy(make_labels(counts))
    gen = torch.Generator().manual_seed(4)
    progressive = DeviceIndexDrawer(labels, 4, "progressive", total_epochs=10)
    strategy = progressive.strategy
    for epoch in (0, 5, 9):
        observed = np.bincount(labels[progressive.draw(100_000, epoch, gen)].numpy(), minlength=4)
        assert chi_square(observed, strategy.class_probabilities(counts, epoch, 10)) < CHI2_3
    drs = DeviceIndexDrawer(labels, 4, build_sampler("drs", start_epoch=3), total_epochs=5)
    assert torch.equal(drs.draw(700, 2, gen).sort().values, torch.arange(700))
    observed = np.bincount(labels[drs.draw(100_000, 3, gen)].numpy(), minlength=4)
    assert chi_square(observed, np.full(4, 0.25)) < CHI2_3


def test_drawer_is_deterministic_with_generator():
    labels = torch.from_numpy(make_labels([50, 20, 5]))
    for name in ("instance", "sqrt"):
        drawer = DeviceIndexDrawer(labels, 3, name)
        a = drawer.draw(300, 0, torch.Generator().manual_seed(7))
        b = drawer.draw(300, 0, torch.Generator().manual_seed(7))
        assert torch.equal(a, b)


def test_strategy_sampler_in_dataloader():
    counts = np.array([300, 60, 12])
    labels = make_labels(counts)
    sampler = StrategySampler(labels, "progressive", num_samples=30_000, generator=torch.Generator().manual_seed(5))
    assert len(sampler) == 30_000
    sampler.set_epoch(4, total_epochs=4)
    loader = torch.utils.data.DataLoader(torch.from_numpy(labels), batch_size=1000, sampler=sampler)
    drawn = torch.cat(list(loader)).numpy()
    assert chi_square(np.bincount(drawn, minlength=3), np.full(3, 1 / 3)) < 13.82  # 2 dof, p = 0.001
    perm = list(StrategySampler(labels, "instance"))
    assert sorted(perm) == list(range(len(labels))) and all(isinstance(i, int) for i in perm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_drawer_has_no_host_sync():
    labels = torch.from_numpy(make_labels([500, 150, 40, 10])).cuda()
    drawers = [DeviceIndexDrawer(labels, 4, name, total_epochs=10) for name in ("instance", "progressive")]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = [d.draw(1500, 3) for d in drawers]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(o.device.type == "cuda" and o.shape == (1500,) for o in out)
