"""LADC's stage 2: posterior formulas by hand, the 60% head/tail rule, the sampler's class
frequencies, factored Gaussians = the calibration functions, exact draws (also from singular head
covariances), and tiny end-to-end runs."""
import json
import math

import numpy as np
import pytest
import torch

import longtail.engine.runner as runner
from longtail.config import load_config
from longtail.data.dataset import ArraySplit, LongTailedDataset
from longtail.errors import ConfigError
from longtail.features.calibration import (
    dc_calibrate,
    head_tail_split,
    ladc_average,
    ladc_calibrate,
    ladc_calibration_terms,
)
from longtail.features.statistics import ClassStatistics
from longtail.methods.ladc import CalibratedFeatureSource, FactoredGaussians, LADCOptions, LADCSampler
from longtail.models.heads import LWSHead, LWSPlusHead, LinearHead
from tests.conftest import tiny_dataset


# ------------------------------------------------------------------------- hand-computed posterior


def dense(g: FactoredGaussians, class_covariances: torch.Tensor) -> torch.Tensor:
    """The ``[R, D, D]`` covariances of factored Gaussians: sum_j weights_j Sigma_{classes_j} + dispersion K."""
    D = class_covariances.shape[-1]
    K = torch.eye(D) if g.mode == "identity" else torch.ones(D, D)
    mixed = (g.weights.unsqueeze(-1).unsqueeze(-1) * class_covariances[g.classes]).sum(1)
    return mixed + g.dispersion.view(-1, 1, 1) * K.to(mixed.dtype)


def ladc_terms(x, stats, head, m, alpha, beta, weighting, n_s, dispersion) -> FactoredGaussians:
    return FactoredGaussians(*ladc_calibration_terms(x, stats.means, stats.counts, head, m, alpha, beta, weighting, n_s),
                             dispersion)


def hand_stats():
    """Head classes A (mean (0,0), n 10), B ((4,0), n 30), C ((0,10), n 10); tail class D."""
    means = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0], [1.0, 1.0]], dtype=torch.float64)
    covs = torch.stack([torch.diag(torch.tensor(v, dtype=torch.float64)) for v in ([1, 2], [3, 1], [5, 5], [0, 0])])
    counts = torch.tensor([10, 30, 10, 2])
    head = torch.tensor([True, True, True, False])
    return ClassStatistics(means, covs, counts), head


@pytest.mark.parametrize(
    "weighting, w_a, w_b",
    [
        # printed Eq. 6: w ∝ n·d²: A 10·1 = 10, B 30·9 = 270 -> 1/28, 27/28
        ("printed", 1 / 28, 27 / 28),
        # inverse distance: w ∝ n/d²: A 10/1 = 10, B 30/9 = 10/3 -> 3/4, 1/4
        ("inverse_distance", 3 / 4, 1 / 4),
    ],
)
def test_posterior_matches_a_hand_computed_case(weighting, w_a, w_b):
    stats, head = hand_stats()
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # d² to A = 1, B = 9, C = 101: S = {A, B}
    alpha, beta = 0.1, 1.0
    mu0 = w_a * torch.tensor([0.0, 0.0]) + w_b * torch.tensor([4.0, 0.0])
    sigma0 = torch.diag(torch.tensor([w_a**2 * 1 + w_b**2 * 3 + alpha, w_a**2 * 2 + w_b**2 * 1 + alpha]))
    prior = beta / (1 + beta)  # n_s = 1
    mu_post = prior * mu0 + (1 - prior) * x[0]
    sigma_post = prior * sigma0
    if weighting == "printed":  # (1/2)·(27/7, 0) + (1/2)·(1, 0) = (17/7, 0)
        torch.testing.assert_close(mu_post, torch.tensor([17 / 7, 0.0], dtype=torch.float64))
    else:
        torch.testing.assert_close(mu_post, torch.tensor([1.0, 0.0], dtype=torch.float64))

    g = ladc_terms(x, stats, head, m=2, alpha=alpha, beta=beta, weighting=weighting, n_s=1.0, dispersion="identity")
    torch.testing.assert_close(g.means[0], mu_post.double())
    torch.testing.assert_close(dense(g, stats.covariances)[0], sigma_post.double())
    assert sorted(g.classes[0].tolist()) == [0, 1]
    means, covs = ladc_calibrate(x, stats, head, m=2, alpha=alpha, beta=beta, weighting=weighting)
    torch.testing.assert_close(means[0], mu_post.double())
    torch.testing.assert_close(covs[0], sigma_post.double())


def test_beta_moves_the_posterior_between_instance_and_prior():
    stats, head = hand_stats()
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # beta = 3: mu' = 3/4 mu0 + 1/4 x, Sigma' = 3/4 Sigma0; printed weights 1/28, 27/28 give
    # mu0 = (27/7, 0), so mu' = (81/28 + 7/28, 0) = (22/7, 0)
    g = ladc_terms(x, stats, head, 2, 0.0, 3.0, "printed", 1.0, "identity")
    torch.testing.assert_close(g.means[0], torch.tensor([22 / 7, 0.0], dtype=torch.float64))
    sigma0 = torch.diag(torch.tensor([(1 + 3 * 729) / 784, (2 + 729) / 784], dtype=torch.float64))
    torch.testing.assert_close(dense(g, stats.covariances)[0], 0.75 * sigma0)
    # beta = 0: no prior, the instance itself with zero covariance
    g0 = ladc_terms(x, stats, head, 2, 0.1, 0.0, "printed", 1.0, "identity")
    torch.testing.assert_close(g0.means[0], x[0])
    torch.testing.assert_close(dense(g0, stats.covariances)[0], torch.zeros(2, 2, dtype=torch.float64))


# ------------------------------------------------------------------------- the 60% rule


@pytest.mark.parametrize(
    "counts, head",
    [
        ([50, 30, 10, 10], [0, 1]),  # 50% < 60% <= 80%
        ([60, 30, 10], [0]),  # exactly 60% is enough
        ([59, 31, 10], [0, 1]),
        ([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], [0, 1]),  # CIFAR-10-LT IF 100: 7997/12406
        ([5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500], [0, 1, 2, 3]),  # IF 10: 14188/20431
    ],
)
def test_head_classes_are_the_largest_holding_60_percent(counts, head):
    feats = torch.randn(sum(counts), 3)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    sampler = LADCSampler(feats, labels, len(counts), LADCOptions(calibration="none"))
    assert torch.nonzero(sampler.head_mask).flatten().tolist() == head
    assert head_tail_split(counts).nonzero().flatten().tolist() == head
    assert sampler.record()["tail_classes"] == [c for c in range(len(counts)) if c not in head]


# ------------------------------------------------------------------------- sampler


def blobs(counts, dim=3, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    centres = scale * torch.randn(len(counts), dim, generator=g)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_min_items_draws_the_real_items_of_small_tail_classes():
    counts = [40, 20, 6, 2, 1]  # head = {0, 1}; tail 2 (6 items) calibrated, tails 3 and 4 fall back with min_items=3
    feats, labels = blobs(counts)
    torch.manual_seed(0)
    sampler = LADCSampler(feats, labels, 5, LADCOptions(min_items=3))
    x, y, generated = sampler.draw_epoch(4000)
    assert sampler.record()["uncalibrated_tail_classes"] == [3, 4]
    assert bool(generated[y == 2].all()) and not bool(generated[(y == 3) | (y == 4)].any())
    real = {tuple(r) for r in feats[labels >= 3].tolist()}
    assert all(tuple(r) in real for r in x[y >= 3].tolist())  # the small classes' own items, unchanged
    assert LADCSampler(feats, labels, 5, LADCOptions()).record()["uncalibrated_tail_classes"] == []  # the paper
    with pytest.raises(ConfigError, match="min_items"):
        LADCOptions.from_options({"min_items": 0})


def test_class_frequencies_follow_eq_13_and_head_draws_are_real_features():
    counts = [8, 4, 2, 1]  # head = {0, 1} (8 < 9 = 60% of 15 <= 12)
    feats, labels = blobs(counts)
    torch.manual_seed(0)
    # literal Eq. 13 (sampling_level: class), tau = 1: P_i ∝ n_1/n_i = 1, 2, 4, 8
    sampler = LADCSampler(feats, labels, 4, LADCOptions(tau=1.0, sampling_level="class"))
    x, y, generated = sampler.draw_epoch(60000)
    freq = torch.bincount(y, minlength=4).double() / 60000
    torch.testing.assert_close(freq, torch.tensor([1, 2, 4, 8], dtype=torch.float64) / 15, atol=0.01, rtol=0)
    # default (instance weights n_1/n_i^tau), tau = 1: class-balanced
    y_bal = LADCSampler(feats, labels, 4, LADCOptions(tau=1.0)).draw_epoch(60000)[1]
    freq = torch.bincount(y_bal, minlength=4).double() / 60000
    torch.testing.assert_close(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.01, rtol=0)
    # tau = 1.2: class level P ∝ n_i^-1.2; instance level P ∝ n_i · n_i^-1.2 = n_i^-0.2
    p = LADCSampler(feats, labels, 4, LADCOptions(tau=1.2, sampling_level="class")).probabilities.double()
    raw = torch.tensor([8**-1.2, 4**-1.2, 2**-1.2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(p, raw / raw.sum(), atol=1e-6, rtol=0)
    p = LADCSampler(feats, labels, 4, LADCOptions(tau=1.2)).probabilities.double()
    raw = torch.tensor([8**-0.2, 4**-0.2, 2**-0.2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(p, raw / raw.sum(), atol=1e-6, rtol=0)
    # head-class draws are real features of their class, tail-class draws are generated
    assert torch.equal(generated, y >= 2)
    real = {tuple(r) for r in feats.tolist()}
    head_rows = x[~generated]
    assert all(tuple(r) in real for r in head_rows[:500].tolist())
    own = torch.cdist(head_rows, feats).argmin(1)
    assert torch.equal(labels[own], y[~generated])
    assert not any(tuple(r) in real for r in x[generated][:500].tolist())


def test_calibration_none_resamples_real_tail_features():
    feats, labels = blobs([8, 4, 2, 1])
    x, y, generated = LADCSampler(feats, labels, 4, LADCOptions(calibration="none")).draw_epoch(200)
    assert not generated.any()
    assert torch.equal(labels[torch.cdist(x, feats).argmin(1)], y)


@pytest.mark.parametrize("calibration", ["instance", "average", "dc"])
@pytest.mark.parametrize("weighting, dispersion", [("printed", "identity"), ("inverse_distance", "all")])
def test_factored_gaussians_equal_the_calibration_functions(calibration, weighting, dispersion):
    feats, labels = blobs([40, 30, 20, 10, 5, 3], dim=6, seed=1)
    feats = feats.abs()  # (for the Tukey case below)
    for lam in (1.0, 0.5):
        opts = LADCOptions(calibration=calibration, weighting=weighting, dispersion=dispersion, dc_dispersion=dispersion,
                           m=2 if calibration != "dc" else 3, alpha=0.15, beta=0.7, tukey_lambda=lam)
        sampler = LADCSampler(feats, labels, 6, opts)
        rows = torch.arange(sampler.row_inputs.shape[0])
        means, covs = sampler.calibrate(rows)
        torch.testing.assert_close(sampler.gaussians.means, means, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense(sampler.gaussians, sampler.stats.covariances()), covs, atol=1e-5, rtol=1e-5)
    expected_rows = {"instance": 38, "average": 4, "dc": 38}[calibration]  # head = {0, 1}: 70/108 >= 60% > 40/108
    assert sampler.row_inputs.shape[0] == expected_rows


@pytest.mark.parametrize("calibration", ["instance", "average", "dc"])
def test_head_only_statistics_give_the_full_statistics_gaussians(calibration):
    """The sampler keeps square-root factors of the head classes only (iNaturalist's [C, D, D] would
    not fit); its Gaussians equal the calibration functions' on the dense statistics of every class."""
    counts = [40, 30, 20, 10, 5, 3]
    feats, labels = blobs(counts, dim=5, seed=3)
    opts = LADCOptions(calibration=calibration, m=2, alpha=0.15, beta=0.7)
    sampler = LADCSampler(feats, labels, 6, opts)
    assert len(sampler.stats.factors) == 2 and sampler.head_classes.tolist() == [0, 1]
    full = ClassStatistics.from_features(feats, labels, 6)
    head = head_tail_split(counts)
    tail_rows = feats[labels >= 2]
    if calibration == "instance":
        expected = ladc_calibrate(tail_rows, full, head, 2, 0.15, 0.7, "printed")
    elif calibration == "average":
        expected = ladc_average(full, head, None, 2, 0.15, 0.7, "printed")
    else:
        expected = dc_calibrate(tail_rows, full, head, 2, opts.dc_alpha, opts.dc_dispersion)
    means, covs = sampler.calibrate(torch.arange(sampler.row_inputs.shape[0]))
    torch.testing.assert_close(means, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(covs, expected[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense(sampler.gaussians, sampler.stats.covariances()), expected[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler_kind", ["factored", "cholesky"])
def test_draws_have_the_calibrated_mean_and_covariance(sampler_kind):
    feats, labels = blobs([60, 40, 10, 6], dim=3, seed=2)
    torch.manual_seed(0)
    sampler = LADCSampler(feats, labels, 4, LADCOptions(sampler=sampler_kind, alpha=0.2, beta=0.5))
    row = torch.tensor([3])
    draws = sampler.generate(row.repeat(40000)).double()
    means, covs = sampler.calibrate(row)
    torch.testing.assert_close(draws.mean(0), means[0].double(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), covs[0].double(), atol=0.05 * float(covs[0].diagonal().max()), rtol=0)
    # a whole epoch: every generated feature comes from the row of the instance that was drawn
    x, y, generated = sampler.draw_epoch(500)
    assert generated.any() and (y[generated] >= 2).all()


@pytest.mark.parametrize(
    "options",
    [
        dict(calibration="instance"),
        dict(calibration="instance", weighting="inverse_distance", dispersion="all", m=1),
        dict(calibration="instance", alpha=0.0, beta=2.0),  # singular calibrated covariance
        dict(calibration="average", n_s=2.0),
        dict(calibration="dc"),  # alpha on every entry (DC's code)
        dict(calibration="dc", dc_dispersion="identity", dc_alpha=0.0),
    ],
)
def test_exact_draws_from_singular_head_covariances(options):
    """Head classes with fewer features than dimensions (6 and 5 in D = 10: ranks 5 and 4): the
    factored draws have the dense calibrated mean and covariance within sampling error (5 sd per
    entry), and where the calibrated covariance itself is singular they stay exactly in its range
    (no jitter)."""
    torch.manual_seed(0)
    D, n = 10, 40000
    feats, labels = blobs([6, 5, 1, 1, 2], dim=D, seed=4)  # head = {0, 1}: 6 < 60% of 15 <= 11
    sampler = LADCSampler(feats, labels, 5, LADCOptions(**{"alpha": 0.3, **options}))
    assert sampler.head_classes.tolist() == [0, 1]
    assert [torch.linalg.matrix_rank(c).item() for c in sampler.dense_stats.covariances] == [5, 4]
    R = sampler.row_inputs.shape[0]
    rows = torch.arange(R).repeat(n)  # interleaved: each draw must land at its own row's position
    all_draws = sampler.generate(rows).double()
    all_means, all_covs = sampler.calibrate(torch.arange(R))
    for row in range(R):
        draws, mu, cov = all_draws[rows == row], all_means[row].double(), all_covs[row].double()
        var = cov.diagonal()
        assert ((draws.mean(0) - mu).abs() <= 5 * (var / n).sqrt() + 1e-6).all()
        sd = ((var.outer(var) + cov**2) / n).sqrt()
        assert ((torch.cov(draws.T) - cov).abs() <= 5 * sd + 1e-6).all()
        evals, evecs = torch.linalg.eigh(cov)
        null = evecs[:, evals < 1e-6 * float(evals.max())]  # e.g. rank 5 + 4 = 9 with alpha = 0
        if options.get("alpha", 0.3) == 0 or options.get("dc_alpha", 0.21) == 0:
            assert null.shape[1] > 0
        assert float(((draws - mu) @ null).abs().sum(1).max()) < 1e-4 * float(var.max().sqrt())


def test_source_serves_the_epoch_in_fixed_batches():
    feats, labels = blobs([8, 4, 2, 1])
    source = CalibratedFeatureSource(LADCSampler(feats, labels, 4, LADCOptions()), batch_size=4, samples_per_epoch=10)
    assert (source.steps_per_epoch, source.batch_size) == (3, 4)
    source.start_epoch(0)
    batches = [source.next() for _ in range(3)]
    assert all(x.shape == (4, 3) and y.shape == (4,) for x, y in batches)
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), source.epoch_x.view(12, 3))
    assert int(source.cursor) == 3


def test_options_are_validated():
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        LADCOptions.from_options({"alpah": 0.1})
    with pytest.raises(ConfigError, match="weighting"):
        LADCOptions.from_options({"weighting": "inverse"})
    assert LADCOptions.from_options({}).weighting == "printed"  # the paper as printed
    with pytest.raises(ConfigError, match="unknown ladc option 'record'"):  # the record is the stage's, not an option
        LADCOptions.from_options({"record": {"x": 1}})


# ------------------------------------------------------------------------- end to end

def run(tmp_path, monkeypatch, method, *extra, dataset=tiny_dataset):
    monkeypatch.setattr(runner, "load_dataset", dataset)
    cfg = load_config(
        mapping={"method": method, "name": method},
        overrides=[
            f"output_dir={tmp_path}", "engine.progress=false", "stages.0.epochs=2", "stages.0.batch_size=32",
            "stages.0.schedule.milestones=[]", "stages.0.schedule.warmup_epochs=1", "model.encoder=resnet20",
            *extra,
        ],
    )
    if len(cfg.stages) > 1:
        cfg.stages[1].epochs, cfg.stages[1].batch_size = 3, 32
        cfg.stages[1].schedule.milestones = [1, 2]
    return cfg, runner.run_config(cfg)


@pytest.mark.parametrize(
    "method, head_type",
    [("ladc", LWSPlusHead), ("ladc_average", LWSPlusHead), ("ladc_dc", LWSPlusHead), ("ladc_crt", LinearHead),
     ("ladc_lws", LWSHead)],
)
def test_ladc_recipes_train_only_the_head(tmp_path, monkeypatch, method, head_type):
    cfg, results = run(tmp_path, monkeypatch, method)
    run_dir = tmp_path / method / "seed0"
    before = torch.load(run_dir / "stage0_stage1.pt")["model"]
    after = torch.load(run_dir / "stage1_ladc.pt")["model"]
    for key in (k for k in before if k.startswith("encoder.")):
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0, msg=key)
    record = results["stage_records"][1]
    assert record["head_classes"] == [0, 1] and record["tail_classes"] == [2, 3]  # 72/90 = 80% >= 60%
    assert record["num_tail_instances"] == 18
    assert [t["stage"] for t in results["timings"]] == ["stage1", "ladc"]
    assert math.isfinite(results["test"]["top1"])
    state = after
    if head_type is LWSPlusHead:
        assert not torch.equal(state["head.logit_bias"], torch.zeros(4))
        torch.testing.assert_close(state["head.base.fc.weight"], before["head.fc.weight"], rtol=0, atol=0)
    if head_type is LinearHead:
        assert not torch.equal(state["head.fc.weight"], before["head.fc.weight"])


def test_stage1_of_the_ladc_recipe_is_remix_and_randaugment():
    cfg = load_config(mapping={"method": "ladc"})
    s1, s2 = cfg.stages
    assert (s1.epochs, s1.augment, s1.mixing["name"]) == (400, "randaugment", "remix")
    assert (s1.schedule.warmup_epochs, s1.schedule.milestones, s1.optimizer.weight_decay) == (5, [320, 360], 5e-4)
    assert (s2.kind, s2.head, s2.epochs, s2.schedule.milestones, s2.schedule.gamma) == ("ladc", "lws_plus", 30, [10, 20], 0.1)
    assert s2.options["weighting"] == "printed"
    no_re = load_config(mapping={"method": "ladc_no_re"}).stages[0]
    assert (no_re.epochs, no_re.augment, no_re.mixing) == (400, "crop_flip", None)


def test_ladc_recipes_share_one_stage1_for_the_benchmark_harness():
    from longtail.config import method_names, to_dict

    names = [n for n in method_names() if n.startswith("ladc")]
    assert {"ladc", "ladc_no_re", "ladc_average", "ladc_dc", "ladc_lws", "ladc_crt", "ladc_re", "ladc_cbs_crt",
            "ladc_cbs_lws", "ladc_las_crt", "ladc_las_lws"} <= set(names)
    first = {n: to_dict(load_config(mapping={"method": n}).stages[0]) for n in names}
    re_stage1 = first["ladc"]
    for name, stage in first.items():
        assert (stage == re_stage1) == (name != "ladc_no_re"), name
    stages2 = {n: load_config(mapping={"method": n}).stages[1] for n in names if n != "ladc_re"}
    assert stages2["ladc_average"].options["calibration"] == "average"
    assert stages2["ladc_dc"].options["calibration"] == "dc"
    assert (stages2["ladc_cbs_crt"].kind, stages2["ladc_cbs_crt"].sampler["name"]) == ("supervised", "class_balanced")
    for head, name in (("crt", "linear"), ("lws", "lws")):  # Table 9's LAS rows: MiSLAS's loss, CBS, LADC's schedule
        las, cbs = stages2[f"ladc_las_{head}"], stages2[f"ladc_cbs_{head}"]
        assert (las.head, las.sampler["name"], las.loss["name"]) == (name, "class_balanced", "label_aware_smoothing")
        assert (las.epochs, las.schedule.milestones, las.optimizer.lr) == (cbs.epochs, cbs.schedule.milestones, cbs.optimizer.lr)


@pytest.mark.parametrize("path, encoder, epochs, schedule", [
    ("imagenet_lt/ladc.yaml", "resnet50", 200, ("multistep", [120, 160])),
    ("imagenet_lt/ladc_resnet10.yaml", "resnet10", 200, ("multistep", [120, 160])),
    ("inat2018/ladc.yaml", "resnet50", 100, ("cosine", [])),
])
def test_large_dataset_configs_have_the_papers_stage1_and_the_cifar_stage2(path, encoder, epochs, schedule):
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / path)
    s1, s2 = cfg.stages
    assert (cfg.model.encoder, s1.epochs, (s1.schedule.name, s1.schedule.milestones)) == (encoder, epochs, schedule)
    assert (s1.augment, s1.mixing["name"], s1.optimizer.weight_decay) == ("randaugment", "remix", 5e-4)
    if schedule[0] == "multistep":
        assert (s1.optimizer.lr, s1.schedule.gamma) == (0.2, 0.1)
    recipe = load_config(mapping={"method": "ladc"}).stages[1]
    assert s2 == recipe  # "the training strategy in the second stage is similar as ... CIFAR"


def test_ladc_stage_can_count_iterations(tmp_path, monkeypatch):
    cfg, results = run(tmp_path, monkeypatch, "ladc", "stages.1.iterations=7", "stages.1.schedule.milestones=[3]")
    epochs = [json.loads(line) for line in (tmp_path / "ladc" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["stage"] == "ladc"] == [1, 2, 3]  # 90 draws / 32 = 3 steps an epoch


@pytest.mark.parametrize("override, message", [("stages.1.train=all", "train: head"),
                                               ("stages.1.options.alhpa=0.2", "did you mean 'alpha'")])
def test_ladc_stage_refuses_bad_settings_before_stage1_trains(tmp_path, monkeypatch, override, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, monkeypatch, "ladc", override)
    assert not (tmp_path / "ladc" / "seed0" / "stage0_stage1.pt").exists()


def gaussian_features(_config=None) -> LongTailedDataset:
    """Four overlapping 2-D classes, 150/90/15/5 training points: CE alone favours the head."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])

    def make(counts):
        y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
        return (centres[y] + rng.normal(size=(len(y), 2))).astype(np.float32), y

    x, y = make([150, 90, 15, 5])
    xt, yt = make([300] * 4)
    return LongTailedDataset("blobs", 4, list("abcd"), ArraySplit(x, y), ArraySplit(xt, yt), meta={"source": "test"})


def test_ladc_on_features_rebalances_towards_the_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", gaussian_features)
    base = ["engine.progress=false", "stages.0.epochs=30", "stages.0.batch_size=64", "stages.0.augment=none",
            "stages.0.schedule.milestones=[]", "stages.0.schedule.warmup_epochs=0", "stages.0.mixing=null"]
    ce = runner.run_config(load_config(mapping={"method": "ladc_re", "name": "ce"}, overrides=[f"output_dir={tmp_path}", *base]))
    cfg = load_config(mapping={"method": "ladc", "name": "ladc"},
                      overrides=[f"output_dir={tmp_path}", *base, "stages.1.batch_size=64"])
    ladc = runner.run_config(cfg)
    assert ladc["stage_records"][1]["head_classes"] == [0, 1]  # 150/260 < 60% <= 240/260
    assert ladc["test"]["few"] > ce["test"]["few"] + 10
    assert ladc["test"]["top1"] > ce["test"]["top1"]


# ------------------------------------------------------------------------- beta (issue 17)
def gaussian_features_with_val(_config=None) -> LongTailedDataset:
    """:func:`gaussian_features` plus a balanced validation split of 20 points per class."""
    ds = gaussian_features()
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    yv = np.repeat(np.arange(4), 20)
    ds.val = ArraySplit((centres[yv] + rng.normal(size=(len(yv), 2))).astype(np.float32), yv)
    return ds


BLOBS = ["engine.progress=false", "stages.0.epochs=10", "stages.0.batch_size=64", "stages.0.augment=none",
         "stages.0.schedule.milestones=[]", "stages.0.schedule.warmup_epochs=0", "stages.0.mixing=null",
         "stages.1.batch_size=64", "stages.1.epochs=4", "stages.1.schedule.milestones=[2]"]


def test_beta_default_without_a_validation_split_is_the_fixed_lower_end(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", gaussian_features)
    results = runner.run_config(load_config(mapping={"method": "ladc", "name": "ladc"},
                                            overrides=[f"output_dir={tmp_path}", *BLOBS]))
    record = results["stage_records"][1]
    assert record["beta"] == 0.4 and record["beta_source"] == "fixed (no validation split)"
    assert LADCOptions().beta == "auto" and LADCOptions().beta_grid == (0.4, 0.7, 1.0, 1.3)


def test_beta_is_chosen_on_the_validation_split_and_the_chosen_classifier_is_the_one_trained(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", gaussian_features_with_val)
    grid = ["stages.1.options.beta_grid=[0.4, 1.3]"]
    chosen = runner.run_config(load_config(mapping={"method": "ladc", "name": "auto"},
                                           overrides=[f"output_dir={tmp_path}", *BLOBS, *grid]))
    record = chosen["stage_records"][1]
    scores = record["beta_val_accuracy"]
    assert record["beta_source"] == "validation" and set(scores) == {"0.4", "1.3"}
    best = max((0.4, 1.3), key=lambda b: (scores[str(b)], -b))
    assert record["beta"] == best
    # the final classifier is the scored one: its balanced validation accuracy is the chosen score ...
    assert np.mean(chosen["val"]["per_class_accuracy"]) == pytest.approx(scores[str(best)], abs=1e-3)
    # ... and the same run with that beta fixed trains the same classifier (same RNG state)
    fixed = runner.run_config(load_config(mapping={"method": "ladc", "name": "fixed"},
                                          overrides=[f"output_dir={tmp_path}", *BLOBS, f"stages.1.options.beta={best}"]))
    assert fixed["stage_records"][1]["beta_source"] == "given"
    assert fixed["test"]["per_class_accuracy"] == chosen["test"]["per_class_accuracy"]


def test_beta_choice_says_which_classes_the_validation_split_lacks(tmp_path, monkeypatch):
    def without_class_3(_config=None):
        ds = gaussian_features_with_val()
        keep = ds.val.y != 3
        ds.val = ArraySplit(ds.val.x[keep], ds.val.y[keep])
        return ds

    monkeypatch.setattr(runner, "load_dataset", without_class_3)
    with pytest.warns(UserWarning, match=r"without items of 1 classes \[3\]"):
        results = runner.run_config(load_config(mapping={"method": "ladc", "name": "lacks"}, overrides=[
            f"output_dir={tmp_path}", *BLOBS, "stages.1.options.beta_grid=[0.4]"]))
    record = results["stage_records"][1]
    assert record["beta_val_classes_without_items"] == [3]
    # the score is the balanced accuracy over the classes the split has, not diluted by a 0 for class 3
    assert record["beta_val_accuracy"]["0.4"] == pytest.approx(np.mean(results["val"]["per_class_accuracy"][:3]), abs=1e-3)


@pytest.mark.parametrize("options, message", [
    ({"beta": "vall"}, "must be a number or 'auto'"),
    ({"beta": -0.5}, "beta must be >= 0"),
    ({"beta_grid": []}, "beta_grid"),
    ({"beta_grid": [0.4, "x"]}, "beta_grid"),
    ({"beta": "val", "calibration": "dc"}, "does not use"),
])
def test_bad_beta_options(options, message):
    with pytest.raises(ConfigError, match=message):
        LADCOptions.from_options(options)


def test_beta_val_without_a_validation_split_fails_before_stage1(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="val_per_class"):
        run(tmp_path, monkeypatch, "ladc", "stages.1.options.beta=val")
    assert not (tmp_path / "ladc" / "seed0" / "stage0_stage1.pt").exists()
