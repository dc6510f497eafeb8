"""Tests of longtail.features: statistics, Tukey, Gaussian sampling, calibration, extraction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from longtail.errors import ConfigError, DataError
from longtail.features.calibration import (
    adapt_beta,
    class_sampling_probabilities,
    dc_calibrate,
    dc_calibration_terms,
    glag_calibrate,
    glag_calibration_terms,
    head_tail_split,
    init_beta,
    ladc_average,
    ladc_calibrate,
    ladc_calibration_terms,
)
from longtail.features.extract import extract_features
from longtail.features.gaussian import cholesky_with_jitter, sample_factored_gaussians, sample_gaussians
from longtail.features.statistics import ClassStatistics, FactoredStatistics, tukey_transform

D64 = torch.float64


def close(a, b, tol=1e-9):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D64), torch.as_tensor(b, dtype=D64), atol=tol, rtol=0)


# ------------------------------------------------------------------------------------------
# Tukey


def test_tukey_powers_and_log():
    x = torch.tensor([0.0, 1.0, 4.0, 9.0])
    close(tukey_transform(x), [0.0, 1.0, 2.0, 3.0])
    close(tukey_transform(x, lam=1.0), x)
    close(tukey_transform(x, lam=2.0), [0.0, 1.0, 16.0, 81.0], tol=1e-5)
    out = tukey_transform(torch.tensor([1.0, math.e]), lam=0.0, eps=0.0)
    close(out, [0.0, 1.0], tol=1e-6)
    assert torch.isfinite(tukey_transform(x, lam=0.0)).all()  # zeros stay finite via eps


def test_tukey_rejects_negative_features_with_fix():
    with pytest.raises(DataError, match="ReLU"):
        tukey_transform(torch.tensor([[0.5, -0.1]]))
    with pytest.raises(ValueError):
        tukey_transform(torch.tensor([1.0]), lam=-1.0)


# ------------------------------------------------------------------------------------------
# class statistics


def test_class_statistics_hand_computed():
    feats = torch.tensor(
        [[0.0, 0.0], [5.0, 5.0], [2.0, 0.0], [1.0, 2.0], [1.0, 3.0], [3.0, 6.0]], dtype=D64
    )
    labels = torch.tensor([0, 1, 0, 3, 0, 3])
    st = ClassStatistics.from_features(feats, labels, num_classes=4)
    close(st.counts, [3, 1, 0, 2])
    close(st.means, [[1, 1], [5, 5], [0, 0], [2, 4]])
    # class 0: centred (-1,-1), (1,-1), (0,2) -> scatter [[2,0],[0,6]] / (3-1)
    close(st.covariances[0], [[1, 0], [0, 3]])
    close(st.covariances[1], torch.zeros(2, 2))  # single sample -> zero
    close(st.covariances[2], torch.zeros(2, 2))  # empty class
    close(st.covariances[3], [[2, 4], [4, 8]])  # (-1,-2),(1,2) -> scatter / 1
    biased = ClassStatistics.from_features(feats, labels, num_classes=4, unbiased=False)
    close(biased.covariances[0], [[2 / 3, 0], [0, 2]])
    close(biased.covariances[3], [[1, 2], [2, 4]])


@pytest.mark.parametrize("chunk_elements", [1, 200, 1 << 27])
def test_class_statistics_match_torch_cov(chunk_elements):
    g = torch.Generator().manual_seed(0)
    C, D = 7, 5
    labels = torch.randint(0, C, (300,), generator=g)
    feats = torch.randn(300, D, generator=g, dtype=D64) * 2 + labels.unsqueeze(1).to(D64)
    st = ClassStatistics.from_features(feats, labels, C, chunk_elements=chunk_elements)
    for c in range(C):
        xc = feats[labels == c]
        close(st.means[c], xc.mean(0), tol=1e-10)
        close(st.covariances[c], torch.cov(xc.T), tol=1e-10)
    assert st.counts.tolist() == torch.bincount(labels, minlength=C).tolist()


def test_class_statistics_rejects_bad_labels():
    with pytest.raises(DataError, match="num_classes"):
        ClassStatistics.from_features(torch.zeros(3, 2), torch.tensor([0, 1, 5]), 3)
    with pytest.raises(DataError):
        ClassStatistics.from_features(torch.zeros(3, 2), torch.tensor([0, 1]), 3)


# ------------------------------------------------------------------------------------------
# Gaussian sampling


def test_cholesky_jitter_makes_singular_factorable():
    singular = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert (torch.linalg.cholesky_ex(singular).info > 0).all()
    L = cholesky_with_jitter(singular)
    assert torch.isfinite(L).all()
    recon = L @ L.transpose(1, 2)
    # reconstruction = cov + small jitter * mean-diagonal * I
    close(recon[0], singular[0], tol=1e-3)
    assert 0 < recon[0, 1, 1] - 1.0 < 1e-3
    assert 0 < recon[1, 0, 0] < 1e-3  # zero matrix: jitter relative to scale 1
    # rank-3 covariance in 10-D
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, generator=g)
    cov = torch.cov(x.T)
    L = cholesky_with_jitter(cov)
    assert L.shape == (10, 10) and torch.isfinite(L).all()
    assert (L @ L.T - cov).abs().max() < 1e-2 * cov.diagonal().mean()


def test_cholesky_leaves_positive_definite_untouched_and_rejects_nan():
    A = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=D64)
    close(cholesky_with_jitter(A), torch.linalg.cholesky(A))
    with pytest.raises(ValueError, match="NaN"):
        cholesky_with_jitter(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="not positive definite"):
        cholesky_with_jitter(torch.tensor([[-1.0, 0.0], [0.0, -1.0]]), max_tries=2)


def test_sample_gaussians_mean_and_covariance():
    g = torch.Generator().manual_seed(2)
    means = torch.tensor([[1.0, -2.0, 0.5], [10.0, 0.0, 0.0]], dtype=D64)
    A = torch.randn(2, 3, 3, generator=g, dtype=D64)
    covs = A @ A.transpose(1, 2) + 0.1 * torch.eye(3, dtype=D64)
    n = 40000
    samples, rows = sample_gaussians(means, covs, n, generator=g)
    assert samples.shape == (2 * n, 3) and rows.tolist() == [0] * n + [1] * n
    for k in range(2):
        s = samples[rows == k]
        se = (covs[k].diagonal() / n).sqrt()
        assert ((s.mean(0) - means[k]).abs() < 5 * se).all()
        # covariance entries: sd of sample cov entry ~ sqrt((s_ii s_jj + s_ij^2)/n)
        sd = ((covs[k].diagonal().outer(covs[k].diagonal()) + covs[k] ** 2) / n).sqrt()
        assert ((torch.cov(s.T) - covs[k]).abs() < 5 * sd).all()


def test_sample_gaussians_variable_counts_and_chunks_and_seed():
    means = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [-100.0, 0.0]])
    covs = torch.eye(2).expand(4, 2, 2).clone()
    counts = torch.tensor([3, 0, 5, 1])
    for chunk in (1, 10, 1 << 20):
        s, rows = sample_gaussians(means, covs, counts, generator=torch.Generator().manual_seed(0), chunk_elements=chunk)
        assert rows.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3]
        # each sample is near its own row's mean (means 100 apart, unit variance)
        assert ((s - means[rows]).norm(dim=1) < 10).all()
    a, _ = sample_gaussians(means, covs, counts, generator=torch.Generator().manual_seed(5))
    b, _ = sample_gaussians(means, covs, counts, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    empty, rows = sample_gaussians(means, covs, 0)
    assert empty.shape == (0, 2) and rows.numel() == 0


def test_factored_statistics_factors_are_exact_square_roots():
    g = torch.Generator().manual_seed(1)
    D = 4
    sizes = [9, 4, 1, 0, 2]  # QR path (n > D), centred rows (n <= D), a single feature, an empty class
    feats = torch.rand(sum(sizes), D, generator=g, dtype=D64) * 3
    labels = torch.repeat_interleave(torch.arange(5), torch.tensor(sizes))
    perm = torch.randperm(labels.shape[0], generator=g)
    feats, labels = feats[perm], labels[perm]
    fs = FactoredStatistics.from_features(feats, labels, 5)
    ref = ClassStatistics.from_features(feats, labels, 5)
    assert [tuple(f.shape) for f in fs.factors] == [(4, 4), (4, 4), (1, 4), (0, 4), (2, 4)]
    close(fs.counts, ref.counts)
    close(fs.means, ref.means)
    close(fs.covariances(), ref.covariances)
    close(fs.dense().covariances, ref.covariances)
    close(fs.variances(), ref.covariances.diagonal(dim1=-2, dim2=-1))
    biased = FactoredStatistics.from_features(feats, labels, 5, unbiased=False)
    close(biased.covariances(), ClassStatistics.from_features(feats, labels, 5, unbiased=False).covariances)


def test_sample_factored_gaussians_match_the_mixed_covariance():
    """x = mu + sum_j sqrt(w_j) F_j^T e_j + sqrt(d) e_0 has covariance sum_j w_j Sigma_j + d K, also with
    singular class covariances (rank 1 and 2 in 3-D), for both dispersion modes."""
    g = torch.Generator().manual_seed(6)
    factors = [torch.randn(r, 3, generator=g, dtype=D64) for r in (3, 1, 2)]
    sigma = torch.stack([f.T @ f for f in factors])
    means = torch.tensor([[1.0, -2.0, 0.5], [10.0, 0.0, 0.0]], dtype=D64)
    classes = torch.tensor([[0, 1, 2], [1, 2, 0]])
    weights = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.25, 0.0]], dtype=D64)
    n = 40000
    for mode, K in (("identity", torch.eye(3, dtype=D64)), ("all", torch.ones(3, 3, dtype=D64))):
        samples, rows = sample_factored_gaussians(means, classes, weights, factors, n, dispersion=0.1, mode=mode, generator=g)
        assert samples.shape == (2 * n, 3) and rows.tolist() == [0] * n + [1] * n
        for r in range(2):
            cov = (weights[r].view(3, 1, 1) * sigma[classes[r]]).sum(0) + 0.1 * K
            s = samples[rows == r]
            assert ((s.mean(0) - means[r]).abs() < 5 * (cov.diagonal() / n).sqrt()).all()
            sd = ((cov.diagonal().outer(cov.diagonal()) + cov**2) / n).sqrt()
            assert ((torch.cov(s.T) - cov).abs() < 5 * sd).all()
    # variable counts (zero allowed), per-row dispersion, small noise blocks, reproducible with a seed
    counts = torch.tensor([0, 3])
    a, rows = sample_factored_gaussians(means, classes, weights, factors, counts, torch.tensor([0.0, 1.0], dtype=D64),
                                        generator=torch.Generator().manual_seed(5), chunk_elements=2)
    b, _ = sample_factored_gaussians(means, classes, weights, factors, counts, torch.tensor([0.0, 1.0], dtype=D64),
                                     generator=torch.Generator().manual_seed(5), chunk_elements=2)
    assert rows.tolist() == [1, 1, 1] and torch.equal(a, b) and ((a - means[1]).norm(dim=1) < 10).all()
    empty, rows = sample_factored_gaussians(means, classes, weights, factors, 0)
    assert empty.shape == (0, 3) and rows.numel() == 0
    with pytest.raises(ValueError, match="non-negative"):
        sample_factored_gaussians(means, classes, -weights, factors, 1)


# ------------------------------------------------------------------------------------------
# calibration: a hand-computed 2-D, 3-class case
#   class 0: n=100, mu=(0,0), Sigma=I
#   class 1: n=50,  mu=(4,0), Sigma=diag(2, 0.5)
#   class 2: n=10,  mu=(1,3), Sigma=[[0.5,0.1],[0.1,0.5]]   (tail)
#   tail feature x = (0, 3): d0 = 3, d1 = 5, d2 = 1 (its own class: never a support class)


@pytest.fixture()
def stats3():
    means = torch.tensor([[0.0, 0.0], [4.0, 0.0], [1.0, 3.0]], dtype=D64)
    covs = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 0.5]], [[0.5, 0.1], [0.1, 0.5]]], dtype=D64
    )
    return ClassStatistics(means, covs, torch.tensor([100, 50, 10]))


X = torch.tensor([[0.0, 3.0]], dtype=D64)
HEAD = torch.tensor([True, True, False])


def test_glag_hand_computed(stats3):
    # w0 = 100/3, w1 = 50/5 = 10 -> normalised 10/13, 3/13; mix mean = (12/13, 0)
    beta = torch.tensor([0.0, 0.0, 0.6], dtype=D64)
    m, c = glag_calibrate(X, torch.tensor([2]), stats3, beta, gamma=0.1, k=2)
    close(m[0], [0.6 * 12 / 13, 0.4 * 3])
    # 0.16 * Sigma_2 + 0.36 * diag(16/13, 11.5/13) + 0.1 I
    close(c[0], [[0.08 + 0.36 * 16 / 13 + 0.1, 0.016], [0.016, 0.08 + 0.36 * 11.5 / 13 + 0.1]])
    # K = 1: support = class 0 only
    m1, c1 = glag_calibrate(X, torch.tensor([2]), stats3, 0.6, k=1)
    close(m1[0], [0.0, 1.2])
    close(c1[0], 0.16 * stats3.covariances[2] + 0.36 * torch.eye(2, dtype=D64))
    # options: no own covariance, gamma on every entry
    _, c2 = glag_calibrate(X, torch.tensor([2]), stats3, 0.6, gamma=0.1, own_covariance="none", dispersion="all")
    close(c2[0], 0.36 * torch.tensor([[16 / 13, 0], [0, 11.5 / 13]], dtype=D64) + 0.1)


def test_glag_calibration_terms_are_the_dense_covariance(stats3):
    """The factored form that the AFG samples from: means equal, sum_j w_j Sigma_{c_j} + gamma I = covs."""
    xs = torch.tensor([[0.0, 3.0], [4.0, 1.0], [0.0, 1.0]], dtype=D64)
    ys = torch.tensor([2, 1, 0])
    beta = torch.tensor([0.3, 0.5, 0.6], dtype=D64)
    for own in ("class", "none"):
        m, classes, weights = glag_calibration_terms(xs, ys, stats3.means, stats3.counts, beta, k=2, own_covariance=own)
        md, cd = glag_calibrate(xs, ys, stats3, beta, gamma=0.1, k=2, own_covariance=own)
        close(m, md)
        assert classes.shape == weights.shape == (3, 2 + (own == "class"))
        mixed = (weights.view(3, -1, 1, 1) * stats3.covariances[classes]).sum(1) + 0.1 * torch.eye(2, dtype=D64)
        close(mixed, cd)
    # class-2 feature of the hand-computed case: support weights 0.36 * (10/13, 3/13), own weight 0.16
    _, classes, weights = glag_calibration_terms(X, torch.tensor([2]), stats3.means, stats3.counts, 0.6, k=2)
    assert classes[0].tolist() == [0, 1, 2]
    close(weights[0], [0.36 * 10 / 13, 0.36 * 3 / 13, 0.16])


def test_glag_support_only_richer_classes(stats3):
    x = torch.tensor([[4.0, 1.0], [0.0, 1.0]], dtype=D64)
    m, c = glag_calibrate(x, torch.tensor([1, 0]), stats3, 0.5, gamma=0.1, k=2)
    # class-1 feature: only class 0 is richer -> mix mean (0,0), mix cov I
    close(m[0], [2.0, 0.5])
    close(c[0], 0.25 * stats3.covariances[1] + 0.25 * torch.eye(2, dtype=D64) + 0.1 * torch.eye(2, dtype=D64))
    # class-0 feature: no richer class -> own statistics
    close(m[1], [0.0, 1.0])
    close(c[1], stats3.covariances[0] + 0.1 * torch.eye(2, dtype=D64))


def test_ladc_printed_weights_hand_computed(stats3):
    # sq. distances 9 (class 0), 25 (class 1); printed w ∝ n d^2: 900, 1250 -> 18/43, 25/43
    m, c = ladc_calibrate(X, stats3, HEAD, m=2, alpha=0.1, beta=1.0, weighting="printed")
    mu0 = torch.tensor([25 / 43 * 4, 0.0], dtype=D64)
    sig0 = torch.diag(torch.tensor([(324 + 625 * 2) / 1849 + 0.1, (324 + 625 * 0.5) / 1849 + 0.1], dtype=D64))
    close(m[0], 0.5 * mu0 + 0.5 * X[0])
    close(c[0], 0.5 * sig0)


def test_ladc_inverse_distance_hand_computed(stats3):
    # w ∝ n / d^2: 100/9, 2 -> 50/59, 9/59; mu0 = (36/59, 0); beta=0.5 -> prior weight 1/3
    m, c = ladc_calibrate(X, stats3, HEAD, m=2, alpha=0.1, beta=0.5, weighting="inverse_distance")
    close(m[0], [12 / 59, 2.0])
    sig0 = torch.diag(torch.tensor([(2500 + 81 * 2) / 3481 + 0.1, (2500 + 81 * 0.5) / 3481 + 0.1], dtype=D64))
    close(c[0], sig0 / 3)
    # m=1: the single nearest head class (class 0), w = 1
    m1, c1 = ladc_calibrate(X, stats3, HEAD, m=1, alpha=0.2, beta=1.0, weighting="inverse_distance")
    close(m1[0], [0.0, 1.5])
    close(c1[0], 0.5 * 1.2 * torch.eye(2, dtype=D64))


def test_ladc_calibration_defaults_to_the_printed_eq6(stats3):
    printed = ladc_calibrate(X, stats3, HEAD, m=2, alpha=0.1, beta=0.5, weighting="printed")
    default = ladc_calibrate(X, stats3, HEAD, m=2, alpha=0.1, beta=0.5)
    close(default[0], printed[0])
    close(default[1], printed[1])


def test_ladc_average_uses_class_mean(stats3):
    # mu_2 = (1,3): sq. distances 10, 18 -> inverse weights 10, 25/9 -> 18/23, 5/23
    m, c = ladc_average(stats3, HEAD, beta=1.0, weighting="inverse_distance")
    assert m.shape == (1, 2)
    close(m[0], [(20 / 23 + 1) / 2, 1.5])
    close(c[0], 0.5 * torch.diag(torch.tensor([374 / 529 + 0.1, 336.5 / 529 + 0.1], dtype=D64)))
    m_inst, c_inst = ladc_calibrate(stats3.means[2:3], stats3, HEAD, beta=1.0, weighting="inverse_distance")
    close(m, m_inst)
    close(c, c_inst)
    # n_s = class count (named variant): prior weight beta/(10+beta)
    m10, _ = ladc_average(stats3, HEAD, beta=1.0, n_s="count", weighting="inverse_distance")
    close(m10[0], [1 / 11 * 20 / 23 + 10 / 11, 30 / 11])


def test_dc_hand_computed(stats3):
    m, c = dc_calibrate(X, stats3, HEAD, k=2, alpha=0.21)
    close(m[0], [4 / 3, 1.0])
    close(c[0], [[1.71, 0.21], [0.21, 0.96]])  # diag(1.5, .75) + 0.21 on every entry
    _, ci = dc_calibrate(X, stats3, HEAD, k=2, alpha=0.21, dispersion="identity")
    close(ci[0], [[1.71, 0.0], [0.0, 0.96]])
    m1, c1 = dc_calibrate(X, stats3, HEAD, k=1, alpha=0.0)
    close(m1[0], [0.0, 1.5])
    close(c1[0], torch.eye(2))


def test_ladc_and_dc_calibration_terms_are_the_dense_covariance(stats3):
    """The factored forms LADC's stage samples from: p w^2 on the support classes and p alpha as the
    dispersion (p = beta/(n_s+beta), per row for a tensor n_s); 1/k and alpha for DC; both modes."""
    xs = torch.tensor([[0.0, 3.0], [1.0, 3.0], [4.0, 1.0]], dtype=D64)
    ns = torch.tensor([1.0, 10.0, 3.0], dtype=D64)
    eye, ones = torch.eye(2, dtype=D64), torch.ones(2, 2, dtype=D64)
    for weighting in ("printed", "inverse_distance"):
        m, classes, weights, spread = ladc_calibration_terms(xs, stats3.means, stats3.counts, HEAD, 2, 0.1, 0.5, weighting, ns)
        close(spread, 0.1 * 0.5 / (ns + 0.5))
        mixed = (weights.view(3, 2, 1, 1) * stats3.covariances[classes]).sum(1)
        for mode, K in (("identity", eye), ("all", ones)):
            md, cd = ladc_calibrate(xs, stats3, HEAD, 2, 0.1, 0.5, weighting, ns, dispersion=mode)
            close(m, md)
            close(mixed + spread.view(3, 1, 1) * K, cd)
    # the hand-computed printed case: weights 0.5 * (18/43, 25/43)^2 on classes 0, 1
    _, classes, weights, spread = ladc_calibration_terms(X, stats3.means, stats3.counts, HEAD, 2, 0.1, 1.0, "printed")
    assert classes[0].tolist() == [0, 1]
    close(weights[0], [0.5 * (18 / 43) ** 2, 0.5 * (25 / 43) ** 2])
    close(spread, [0.05])
    m, classes, weights = dc_calibration_terms(xs, stats3.means, HEAD, k=2)
    close(weights, torch.full((3, 2), 0.5))
    md, cd = dc_calibrate(xs, stats3, HEAD, k=2, alpha=0.21)
    close(m, md)
    close((weights.view(3, 2, 1, 1) * stats3.covariances[classes]).sum(1) + 0.21, cd)


def test_option_validation(stats3):
    with pytest.raises(ConfigError, match="weighting"):
        ladc_calibrate(X, stats3, HEAD, weighting="nearest")
    with pytest.raises(ConfigError, match="dispersion"):
        glag_calibrate(X, torch.tensor([2]), stats3, 0.6, dispersion="diag")
    with pytest.raises(DataError):
        ladc_calibrate(X, stats3, torch.tensor([False, False, False]))


def test_calibrated_samples_have_calibrated_statistics(stats3):
    """End to end: calibrate tail features, sample, and recover the calibrated moments."""
    g = torch.Generator().manual_seed(3)
    xs = torch.tensor([[0.0, 3.0], [2.0, 2.0]], dtype=D64)
    m, c = glag_calibrate(xs, torch.tensor([2, 2]), stats3, 0.6, gamma=0.1)
    n = 50000
    s, rows = sample_gaussians(m, c, n, generator=g)
    for k in range(2):
        sk = s[rows == k]
        sd = ((c[k].diagonal().outer(c[k].diagonal()) + c[k] ** 2) / n).sqrt()
        assert ((sk.mean(0) - m[k]).abs() < 5 * (c[k].diagonal() / n).sqrt()).all()
        assert ((torch.cov(sk.T) - c[k]).abs() < 5 * sd).all()


def test_calibration_batched_higher_dim_matches_loop():
    g = torch.Generator().manual_seed(4)
    C, D, M = 12, 16, 30
    counts = torch.arange(C, 0, -1) * 10
    means = torch.randn(C, D, generator=g, dtype=D64) * 3
    A = torch.randn(C, D, D, generator=g, dtype=D64)
    covs = A @ A.transpose(1, 2) / D
    st = ClassStatistics(means, covs, counts)
    x = torch.randn(M, D, generator=g, dtype=D64) * 3
    y = torch.randint(3, C, (M,), generator=g)
    beta = torch.rand(C, generator=g, dtype=D64)
    m, c = glag_calibrate(x, y, st, beta, gamma=0.1, k=3)
    for i in range(M):  # reference: straightforward per-feature loop
        richer = [j for j in range(C) if counts[j] > counts[y[i]]]
        d = torch.stack([(x[i] - means[j]).norm() for j in richer])
        order = torch.argsort(d)[:3]
        S = [richer[o] for o in order]
        w = torch.stack([counts[j] / (x[i] - means[j]).norm() for j in S]).to(D64)
        w = w / w.sum()
        b = beta[y[i]]
        mm = (1 - b) * x[i] + b * sum(wj * means[j] for wj, j in zip(w, S))
        cc = (1 - b) ** 2 * covs[y[i]] + b**2 * sum(wj * covs[j] for wj, j in zip(w, S)) + 0.1 * torch.eye(D, dtype=D64)
        close(m[i], mm, tol=1e-9)
        close(c[i], cc, tol=1e-9)


# ------------------------------------------------------------------------------------------
# head/tail split, sampling probabilities, beta adaptation


def test_head_tail_split_sixty_percent_rule():
    assert head_tail_split([50, 30, 10, 10]).tolist() == [True, True, False, False]
    assert head_tail_split([60, 20, 20]).tolist() == [True, False, False]  # exactly 60%
    assert head_tail_split([10, 50, 10, 30]).tolist() == [False, True, False, True]  # unsorted
    assert head_tail_split([25, 25, 25, 25]).tolist() == [True, True, True, False]  # ties by index
    assert head_tail_split(torch.tensor([50, 30, 10, 10]), head_fraction=0.5).tolist() == [True, False, False, False]


def test_class_sampling_probabilities():
    close(class_sampling_probabilities([100, 10], tau=1.0), [1 / 11, 10 / 11])
    a, b = 100 ** -0.2, 100 / 10**1.2
    close(class_sampling_probabilities([100, 10]), [a / (a + b), b / (a + b)])
    close(class_sampling_probabilities([7, 3, 1], tau=0.0), [1 / 3] * 3)
    with pytest.raises(DataError):
        class_sampling_probabilities([5, 0])


def test_adapt_beta_direction_bounds_and_mask():
    beta = torch.tensor([0.6, 0.6, 0.6, 0.98, 0.02, 0.6])
    beta0 = beta.clone()
    now = torch.tensor([0.5, 0.3, 0.4, 0.9, 0.1, 0.9])
    prev = torch.tensor([0.4, 0.4, 0.4, 0.8, 0.2, 0.1])
    mask = torch.tensor([True, True, True, True, True, False])
    new = adapt_beta(beta, now, prev, step=0.05, classes=mask)
    close(new, [0.65, 0.55, 0.6, 1.0, 0.0, 0.6], tol=1e-6)
    assert torch.equal(beta, beta0)  # not modified in place
    close(adapt_beta(beta, now, None), beta, tol=0)
    close(adapt_beta(beta[:1], now[:1], prev[:1], tolerance=0.2), beta[:1], tol=0)
    close(init_beta(torch.tensor([False, True])), [0.0, 0.6], tol=1e-7)


# ------------------------------------------------------------------------------------------
# extraction and cache


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.out_dim = 4

    def forward(self, x):
        return self.drop(torch.relu(self.bn(self.conv(x)))).mean((2, 3))


def test_extract_features_matches_manual_eval():
    torch.manual_seed(0)
    enc = TinyEncoder()
    enc.train()
    imgs = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    feats = extract_features(enc, imgs, mean, std, batch_size=3)
    assert enc.training  # mode restored
    assert feats.shape == (10, 4) and feats.dtype == torch.float32
    enc.eval()
    with torch.no_grad():
        x = (imgs.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        ref = enc(x)
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    # numpy input, float images (0..1 scale), no normalisation
    f2 = extract_features(enc, (imgs.numpy() / 255.0).astype(np.float32), batch_size=1024)
    with torch.no_grad():
        torch.testing.assert_close(f2, enc(imgs.float() / 255), atol=1e-5, rtol=1e-5)
