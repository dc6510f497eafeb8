"""Feature-distribution calibration of tail classes: GLAG's AFG, LADC, LADC_Average and DC.

All rules take tail features ``x̂ [M, D]`` (usually Tukey-transformed, see
:func:`longtail.features.statistics.tukey_transform`) and per-class statistics
(:class:`~longtail.features.statistics.ClassStatistics`), pick a support set of nearby richer
classes per feature, and return one Gaussian per feature: ``(means [M, D], covs [M, D, D])``,
ready for :func:`longtail.features.gaussian.sample_gaussians`. Each row is independent, so callers
with a large feature width (``covs`` takes ``M·D²`` floats) calibrate and sample in row chunks.
:func:`glag_calibration_terms`, :func:`ladc_calibration_terms` and :func:`dc_calibration_terms` give
the same Gaussians in factored form instead (each covariance as non-negative weights over class
covariances, plus the dispersion term), for
:func:`longtail.features.gaussian.sample_factored_gaussians`, which needs no ``D x D`` matrix per row;
the dense rules build their covariances from these terms.

Papers:

* GLAG — "Long-Tailed Classification with Gradual Balanced Loss and Adaptive Feature
  Generation", Sec. 4.2, Eq. 5-10 (:func:`glag_calibrate`, :func:`glag_calibration_terms`,
  :func:`adapt_beta`).
* LADC — Wang et al. 2021, "Label-Aware Distribution Calibration for Long-tailed
  Classification", Eq. 4-13 (:func:`head_tail_split`, :func:`ladc_calibrate`,
  :func:`ladc_calibration_terms`, :func:`ladc_average`, :func:`class_sampling_probabilities`).
* DC — Yang, Liu & Xu 2021, "Free Lunch for Few-shot Learning: Distribution Calibration",
  Eq. 6 (:func:`dc_calibrate`, :func:`dc_calibration_terms`).

Dispersion term (``gamma`` in GLAG, ``alpha`` in LADC and DC), option ``dispersion``:
``"identity"`` adds ``value · I`` (isotropic extra variance); ``"all"`` adds ``value`` to every
entry of the matrix (``value · 1 1^T``), which is what DC's reference implementation does
(``np.mean(base_cov[index], axis=0) + alpha`` broadcasts the scalar). LADC prints ``αI``
(Eq. 7): default ``"identity"``. GLAG prints a bare ``+ γ`` (Eq. 9) and calls it a parameter "to
increase the degree of dispersion", which only ``γI`` does in every direction: default
``"identity"``. DC's paper also prints a bare ``+ α``; default ``"all"`` to reproduce its code.

Support sets are chosen with ``torch.cdist`` + ``topk`` over all classes at once (classes that are
not eligible get distance ``+inf``); the distances entering the weights are then recomputed
exactly for the selected classes. If fewer eligible classes than requested exist, the support set
is all eligible classes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError, DataError
from .statistics import ClassStatistics

__all__ = [
    "glag_calibrate",
    "glag_calibration_terms",
    "adapt_beta",
    "init_beta",
    "head_tail_split",
    "ladc_calibrate",
    "ladc_calibration_terms",
    "ladc_average",
    "dc_calibrate",
    "dc_calibration_terms",
    "class_sampling_probabilities",
]

_TINY = 1e-12
_DISPERSIONS = ("identity", "all")
_WEIGHTINGS = ("inverse_distance", "printed")


# --------------------------------------------------------------------------------------------
# shared helpers


def _check_option(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {list(allowed)}")


def _as_rows(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """``features`` checked against the class ``means [C, D]`` and cast to their device and dtype."""
    D = means.shape[1]
    if features.dim() != 2 or features.shape[1] != D:
        raise DataError(f"features must be [M, {D}] (the statistics' width), got {tuple(features.shape)}")
    return features.to(device=means.device, dtype=means.dtype)


def _support(
    queries: torch.Tensor, centres: torch.Tensor, eligible: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` nearest eligible centres of every query.

    ``eligible`` is ``[C]`` or ``[M, C]`` bool. Returns ``idx [M, k']`` (``k' = min(k, C)``),
    ``valid [M, k']`` (False where fewer than ``k'`` centres are eligible) and the exact squared
    Euclidean distances ``sqdist [M, k']`` (0 where not valid).
    """
    if k < 1:
        raise ConfigError(f"the support size must be >= 1, got {k}")
    M, C = queries.shape[0], centres.shape[0]
    kk = min(k, C)
    dist = torch.cdist(queries, centres)  # [M, C]; only used for ranking
    eligible = eligible.expand(M, C) if eligible.dim() == 1 else eligible
    dist = dist.masked_fill(~eligible, float("inf"))
    _, idx = torch.topk(dist, kk, dim=1, largest=False)
    valid = torch.gather(eligible, 1, idx)
    diff = queries.unsqueeze(1) - centres[idx]  # [M, k', D]
    sqdist = (diff * diff).sum(-1).masked_fill(~valid, 0.0)
    return idx, valid, sqdist


def _mix_covariances(weights: torch.Tensor, idx: torch.Tensor, covs: torch.Tensor) -> torch.Tensor:
    """``sum_j weights[:, j] * covs[idx[:, j]]`` -> ``[M, D, D]`` (loop over the few support slots)."""
    M, D = idx.shape[0], covs.shape[-1]
    out = torch.zeros(M, D, D, dtype=covs.dtype, device=covs.device)
    for j in range(idx.shape[1]):
        out.add_(weights[:, j].view(M, 1, 1) * covs[idx[:, j]])
    return out


def _add_dispersion(covs: torch.Tensor, value: float | torch.Tensor, mode: str) -> torch.Tensor:
    """``covs [M, D, D] + value·I`` (``"identity"``) or ``+ value`` on every entry (``"all"``);
    ``value`` is a number or a per-row ``[M]`` tensor."""
    _check_option("dispersion", mode, _DISPERSIONS)
    if isinstance(value, (int, float)) and value == 0:
        return covs
    v = torch.as_tensor(value, dtype=covs.dtype, device=covs.device).reshape(-1, 1)
    if mode == "all":
        return covs + v.unsqueeze(-1)
    out = covs.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(v)
    return out


def _normalise(raw: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rows of ``raw`` (zero where not valid) scaled to sum to one; uniform over the valid slots
    where a row sums to zero."""
    raw = raw.masked_fill(~valid, 0.0)
    total = raw.sum(1, keepdim=True)
    uniform = valid.to(raw.dtype) / valid.sum(1, keepdim=True).clamp(min=1).to(raw.dtype)
    return torch.where(total > 0, raw / total.clamp(min=_TINY), uniform)


def _counts(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(class_counts).flatten()
    if counts.numel() == 0:
        raise DataError("class_counts is empty")
    if bool((counts < 0).any()):
        raise DataError(f"class_counts must be non-negative, got {counts.tolist()[:20]}")
    return counts


# --------------------------------------------------------------------------------------------
# GLAG: adaptive feature generator


def glag_calibration_terms(
    features: torch.Tensor,
    feature_labels: torch.Tensor,
    means: torch.Tensor,
    counts: torch.Tensor,
    beta: float | torch.Tensor,
    k: int = 2,
    own_covariance: str = "class",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GLAG's calibrated Gaussians (Eq. 7-10) in factored form, without any ``D x D`` matrix.

    Returns ``(means' [M, D], classes [M, J], weights [M, J])`` such that the calibrated covariance
    of row ``i`` is ``sum_j weights[i, j] * Sigma_{classes[i, j]}`` (plus the dispersion term, added
    by the caller): the ``K`` support slots carry ``b^2 w_j / sum_S w`` and, with
    ``own_covariance="class"``, a last slot carries ``(1 - b)^2`` on the feature's own class.
    Unused slots have weight 0. Same rule, options and checks as :func:`glag_calibrate`, which
    builds its dense covariances from these terms; ``means [C, D]`` and ``counts [C]`` are the
    class statistics. Feed the result to
    :func:`~longtail.features.gaussian.sample_factored_gaussians`.
    """
    _check_option("own_covariance", own_covariance, ("class", "none"))
    C = means.shape[0]
    x = _as_rows(features, means)
    y = torch.as_tensor(feature_labels, device=means.device).long().flatten()
    if y.shape[0] != x.shape[0]:
        raise DataError(f"features ({x.shape[0]} rows) and feature_labels ({y.shape[0]}) differ in length")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
        raise DataError(f"feature_labels must lie in 0..{C - 1}")
    dtype = x.dtype
    beta_t = torch.as_tensor(beta, dtype=dtype, device=means.device)
    if beta_t.dim() == 0:
        b = beta_t.expand(x.shape[0])
    elif beta_t.shape == (C,):
        b = beta_t[y]
    else:
        raise ConfigError(f"beta must be a scalar or a [{C}] per-class tensor, got shape {tuple(beta_t.shape)}")

    counts = counts.to(means.device)
    richer = counts.unsqueeze(0) > counts[y].unsqueeze(1)  # [M, C]
    idx, valid, sqdist = _support(x, means, richer, k)
    raw = counts[idx].to(dtype) / sqdist.sqrt().clamp(min=_TINY)
    w = _normalise(raw, valid)
    b = torch.where(valid.any(1), b, torch.zeros_like(b))

    mix_mean = (w.unsqueeze(-1) * means[idx]).sum(1)
    cal_means = (1 - b).unsqueeze(1) * x + b.unsqueeze(1) * mix_mean
    classes = torch.where(valid, idx, y.unsqueeze(1))
    weights = (b * b).unsqueeze(1) * w
    if own_covariance == "class":
        classes = torch.cat([classes, y.unsqueeze(1)], 1)
        weights = torch.cat([weights, ((1 - b) ** 2).unsqueeze(1)], 1)
    return cal_means, classes, weights


def glag_calibrate(
    features: torch.Tensor,
    feature_labels: torch.Tensor,
    stats: ClassStatistics,
    beta: float | torch.Tensor,
    gamma: float = 0.0,
    k: int = 2,
    own_covariance: str = "class",
    dispersion: str = "identity",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLAG's adaptive feature generator (AFG): one calibrated Gaussian per tail feature.

    For tail feature ``x̂_i`` of class ``y_i`` (GLAG Eq. 7-10)::

        d_ij  = ||x̂_i - mu_j||          over classes j with n_j > n_{y_i} (strictly more samples)
        S     = the K classes with the smallest d_ij         (K = k, 2 or 3 in the paper)
        w_j   = n_j / d_ij,  j in S
        mu_i' = (1 - b) x̂_i + b * sum_S w_j mu_j / sum_S w_j
        Sig_i'= (1 - b)^2 Sigma_i + b^2 * sum_S w_j Sigma_j / sum_S w_j + gamma

    with ``b = beta[y_i]`` (the class-wise adaptive confidence score; the paper initialises it at
    0.6, its ablation text says 0.4 — see :func:`init_beta`, :func:`adapt_beta`) and
    ``gamma`` in {0, 0.1} in the paper (default 0).

    Decisions where the paper is ambiguous:

    * ``Sigma_i`` (Eq. 9, indexed by the sample) is the covariance of the feature's own class
      ``Sigma_{y_i}`` — a single feature has no covariance, and Eq. 6 defines covariances per class
      (``own_covariance="class"``, default). ``own_covariance="none"`` drops the term.
    * ``+ gamma`` is ``gamma·I`` by default (``dispersion="identity"``), ``"all"`` adds ``gamma``
      to every entry (DC's code); see the module docstring.
    * "Classes with more training samples" means strictly more than the feature's class (ties
      are not support classes). If fewer than ``k`` such classes exist, all of them are used; a
      feature of a class with no richer class (the largest class) keeps its own statistics
      (``b`` treated as 0: mean ``x̂_i``, covariance ``Sigma_{y_i} + gamma``). GLAG resamples head
      classes from real features, so such rows normally do not occur.
    * A zero distance (feature exactly on a class mean) is clamped to 1e-12, which gives that
      class (almost) all the weight.

    Dense ``[M, D, D]`` output: for large ``D`` sample from :func:`glag_calibration_terms` with
    :func:`~longtail.features.gaussian.sample_factored_gaussians` instead (no per-row matrix).

    Args:
        features: ``[M, D]`` tail features (same transform as the statistics).
        feature_labels: ``[M]`` their classes.
        stats: statistics of all classes (``stats.counts`` decides which classes are richer).
        beta: scalar or per-class tensor ``[C]``.
        gamma: dispersion added to the covariance.
        k: support-set size K.
        own_covariance: ``"class"`` | ``"none"``.
        dispersion: ``"identity"`` | ``"all"``.

    Returns:
        ``(means [M, D], covs [M, D, D])`` in the statistics' dtype and device.
    """
    _check_option("dispersion", dispersion, _DISPERSIONS)
    means, classes, weights = glag_calibration_terms(
        features, feature_labels, stats.means, stats.counts, beta, k=k, own_covariance=own_covariance
    )
    return means, _add_dispersion(_mix_covariances(weights, classes, stats.covariances), gamma, dispersion)


def init_beta(tail_mask: torch.Tensor, value: float = 0.6) -> torch.Tensor:
    """GLAG's initial per-class confidence score: ``value`` on tail classes, 0 elsewhere.

    The implementation details of GLAG give 0.6 ("initialized to 0.6 for tail classes"); its
    ablation section says 0.4. Default 0.6 (the implementation-details value).
    """
    tail_mask = torch.as_tensor(tail_mask, dtype=torch.bool)
    return tail_mask.to(torch.float32) * float(value)


def adapt_beta(
    beta: torch.Tensor,
    val_acc_now: torch.Tensor,
    val_acc_prev: torch.Tensor | None,
    step: float = 0.05,
    bounds: tuple[float, float] = (0.0, 1.0),
    classes: torch.Tensor | None = None,
    tolerance: float = 0.0,
) -> torch.Tensor:
    """GLAG's adaptive confidence score update (Sec. 4.2), applied once per stage-2 epoch.

    "If AFG improves the performance of the tail classes ... increase β; if we observe worse
    performance ... β will be decreased." The paper gives no step size; we use a fixed additive
    step on the sign of the change of the per-class validation accuracy::

        beta_c <- clip(beta_c + step * sign(acc_now_c - acc_prev_c), *bounds)

    (a change of at most ``tolerance`` counts as no change). Default ``step = 0.05``: from the
    initial 0.6, eight consecutive improvements reach the upper bound 1 and twelve declines reach 0,
    i.e. β can travel its whole range within the paper's 40 stage-2 epochs, while one noisy epoch
    moves it by only 5% of the mixing weight.

    Args:
        beta: per-class ``[C]`` confidence scores.
        val_acc_now, val_acc_prev: per-class validation accuracies ``[C]`` this epoch and the
            previous one; ``val_acc_prev=None`` (first epoch) returns ``beta`` unchanged.
        classes: optional ``[C]`` bool mask of the classes to adapt (the tail classes); the others
            keep their value.

    Returns:
        A new tensor; ``beta`` is not modified.
    """
    beta = torch.as_tensor(beta)
    if val_acc_prev is None:
        return beta.clone()
    now = torch.as_tensor(val_acc_now, dtype=beta.dtype, device=beta.device)
    prev = torch.as_tensor(val_acc_prev, dtype=beta.dtype, device=beta.device)
    if now.shape != beta.shape or prev.shape != beta.shape:
        raise DataError(
            f"beta {tuple(beta.shape)}, val_acc_now {tuple(now.shape)} and val_acc_prev "
            f"{tuple(prev.shape)} must have the same per-class shape"
        )
    lo, hi = bounds
    if lo > hi:
        raise ConfigError(f"bounds must be (low, high) with low <= high, got {bounds}")
    diff = now - prev
    direction = torch.sign(diff) * (diff.abs() > tolerance).to(beta.dtype)
    new = (beta + step * direction).clamp(lo, hi)
    if classes is not None:
        mask = torch.as_tensor(classes, dtype=torch.bool, device=beta.device)
        new = torch.where(mask, new, beta)
    return new


# --------------------------------------------------------------------------------------------
# LADC


def head_tail_split(class_counts: Sequence[int] | torch.Tensor, head_fraction: float = 0.6) -> torch.Tensor:
    """LADC's head classes: the most frequent classes that together hold at least
    ``head_fraction`` (60%) of the training images — the smallest such set. Returns a bool mask
    ``[C]`` (True = head); the rest are tail.

    Classes are ranked by count (descending); ties are ranked by class index (lower first), so the
    split is deterministic. E.g. counts ``[50, 30, 10, 10]``: 50% < 60% ≤ 80%, head = classes 0, 1.
    """
    counts = _counts(class_counts)
    if not 0 < head_fraction <= 1:
        raise ConfigError(f"head_fraction must be in (0, 1], got {head_fraction}")
    total = counts.sum()
    if int(total) == 0:
        raise DataError("class_counts are all zero")
    order = torch.argsort(-counts.to(torch.float64), stable=True)
    cum = torch.cumsum(counts[order].to(torch.float64), 0)
    threshold = head_fraction * float(total) * (1 - 1e-12)
    num_head = int((cum < threshold).sum()) + 1
    mask = torch.zeros(counts.shape[0], dtype=torch.bool, device=counts.device)
    mask[order[:num_head]] = True
    return mask


def ladc_calibration_terms(
    features: torch.Tensor,
    means: torch.Tensor,
    counts: torch.Tensor,
    head_mask: torch.Tensor,
    m: int = 2,
    alpha: float = 0.1,
    beta: float = 1.0,
    weighting: str = "printed",
    n_s: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LADC's calibrated Gaussians (Eq. 4-12, :func:`ladc_calibrate`) in factored form.

    Returns ``(means' [M, D], classes [M, m'], weights [M, m'], dispersion [M])`` such that
    ``Sigma'_i = sum_j weights[i, j] Sigma_{classes[i, j]} + dispersion[i] K`` with ``K = I`` (Eq. 7)
    or ``1 1^T`` (``dispersion="all"``, the caller's choice): ``weights = p w^2`` and
    ``dispersion = p alpha`` with ``p = beta / (n_s + beta)``. ``means [C, D]`` and ``counts [C]``
    are the class statistics; ``n_s`` is a number or a per-row ``[M]`` tensor. Feed the result
    to :func:`~longtail.features.gaussian.sample_factored_gaussians`.
    """
    _check_option("weighting", weighting, _WEIGHTINGS)
    x = _as_rows(features, means)
    head = torch.as_tensor(head_mask, dtype=torch.bool, device=means.device).flatten()
    if head.shape[0] != means.shape[0]:
        raise DataError(f"head_mask has {head.shape[0]} entries for {means.shape[0]} classes")
    if not bool(head.any()):
        raise DataError("head_mask selects no class; LADC needs head-class statistics (see head_tail_split)")
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta}")
    dtype = x.dtype
    idx, valid, sqdist = _support(x, means, head, m)
    n = counts.to(means.device)[idx].to(dtype)
    if weighting == "printed":
        raw = n * sqdist
    else:
        raw = n / sqdist.clamp(min=_TINY)
    w = _normalise(raw, valid)
    mu0 = (w.unsqueeze(-1) * means[idx]).sum(1)
    ns = torch.as_tensor(n_s, dtype=dtype, device=means.device).reshape(-1)
    if bool((ns <= 0).any()):
        raise ConfigError("n_s must be positive")
    prior = (beta / (ns + beta)).expand(x.shape[0])
    cal_means = prior.unsqueeze(1) * mu0 + (1 - prior).unsqueeze(1) * x
    return cal_means, idx, prior.unsqueeze(1) * w * w, prior * alpha


def _ladc_posterior(
    queries: torch.Tensor,
    stats: ClassStatistics,
    head_mask: torch.Tensor,
    m: int,
    alpha: float,
    beta: float,
    weighting: str,
    n_s: float | torch.Tensor,
    dispersion: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense Eq. 11-12 from :func:`ladc_calibration_terms`."""
    _check_option("dispersion", dispersion, _DISPERSIONS)
    means, classes, weights, spread = ladc_calibration_terms(
        queries, stats.means, stats.counts, head_mask, m, alpha, beta, weighting, n_s
    )
    return means, _add_dispersion(_mix_covariances(weights, classes, stats.covariances), spread, dispersion)


def ladc_calibrate(
    features: torch.Tensor,
    stats: ClassStatistics,
    head_mask: torch.Tensor,
    m: int = 2,
    alpha: float = 0.1,
    beta: float = 1.0,
    weighting: str = "printed",
    n_s: float = 1.0,
    dispersion: str = "identity",
) -> tuple[torch.Tensor, torch.Tensor]:
    """LADC: a calibrated (posterior) Gaussian for every tail instance ``x̂`` (LADC Eq. 4-12)::

        S      = the m head classes with the smallest ||mu_i - x̂||^2           (Eq. 4-5)
        w_i    = see ``weighting`` below                                      (Eq. 6)
        mu_0   = sum_S w_i mu_i,   Sigma_0 = sum_S w_i^2 Sigma_i + alpha I     (Eq. 7)
        mu'    = beta/(n_s+beta) mu_0 + n_s/(n_s+beta) x̂                      (Eq. 11)
        Sigma' = beta/(n_s+beta) Sigma_0                                       (Eq. 12)

    with ``n_s = 1`` (one instance; the paper's setting) — Eq. 11-12 are the conjugate posterior
    of a Gaussian mean with prior ``N(mu_0, Sigma_0)`` and likelihood covariance ``L = beta·Sigma_0``.
    Paper ranges: ``m`` in {2, 3}, ``alpha`` in [0.1, 0.2], ``beta`` in [0.4, 1.3]; the defaults
    are ``m = 2``, ``alpha = 0.1`` and ``beta = 1.0`` (within the ranges; the paper gives no single
    value).

    ``weighting``:

    * ``"printed"`` (default): Eq. 6 as printed, ``w_i = n_i ||mu_i - x̂||^2 / sum_j n_j ||mu_j - x̂||^2``.
    * ``"inverse_distance"``: ``w_i ∝ n_i / ||mu_i - x̂||^2`` (inverse *squared* distance),
      normalised over S.

    Why both: the paper states that ``w`` "is designed to impose tail classes to learn more from
    head classes that are more abundant and more similar", but the printed Eq. 6 gives *more*
    weight to the *farther* (less similar) head class. The inverse-distance form is the reading
    consistent with that sentence; the printed form is the default because it is the paper's
    equation. Both agree on abundance (∝ n_i).

    Args:
        features: ``[M, D]`` tail instances (same transform as the statistics).
        stats: class statistics; only the head classes are used.
        head_mask: ``[C]`` bool, True for head classes (:func:`head_tail_split`).
        dispersion: ``"identity"`` (``alpha I``, Eq. 7) | ``"all"``.

    Returns:
        ``(means [M, D], covs [M, D, D])``.
    """
    return _ladc_posterior(features, stats, head_mask, m, alpha, beta, weighting, n_s, dispersion)


def ladc_average(
    stats: ClassStatistics,
    head_mask: torch.Tensor,
    classes: torch.Tensor | None = None,
    m: int = 2,
    alpha: float = 0.1,
    beta: float = 1.0,
    weighting: str = "printed",
    n_s: float | str = 1.0,
    dispersion: str = "identity",
) -> tuple[torch.Tensor, torch.Tensor]:
    """LADC_Average (LADC ablation, Table 8): calibrate once per tail *class*, with ``x̂`` replaced
    by the class mean ``mu_c`` in Eq. 4-12 (same rule and options as :func:`ladc_calibrate`).

    ``classes``: the classes to calibrate (int tensor); default all non-head classes in increasing
    index order. Rows of the result follow ``classes``.
    ``n_s``: the paper keeps ``n_s = 1`` (default). ``n_s="count"`` uses the class size, i.e. the
    exact conjugate posterior for a mean of ``n_c`` observations (a named variant, not the paper's).

    Returns:
        ``(means [T, D], covs [T, D, D])``.
    """
    head = torch.as_tensor(head_mask, dtype=torch.bool, device=stats.device).flatten()
    if classes is None:
        classes = torch.nonzero(~head).flatten()
    classes = torch.as_tensor(classes, device=stats.device).long().flatten()
    if n_s == "count":
        ns: float | torch.Tensor = stats.counts.to(stats.device)[classes].to(stats.means.dtype).clamp(min=1)
    elif isinstance(n_s, str):
        raise ConfigError(f"n_s must be a positive number or 'count', got {n_s!r}")
    else:
        ns = n_s
    return _ladc_posterior(stats.means[classes], stats, head, m, alpha, beta, weighting, ns, dispersion)


def class_sampling_probabilities(class_counts: Sequence[int] | torch.Tensor, tau: float = 1.2) -> torch.Tensor:
    """LADC's stage-2 class sampling distribution (Eq. 13)::

        P_i = (n_1 / n_i^tau) / sum_j (n_1 / n_j^tau)

    ``n_1`` = the largest class count (it cancels after normalisation); ``tau`` in [1.2, 1.3] in
    the paper (default 1.2; ``tau = 1`` is inverse-frequency, ``tau = 0`` uniform). Returns float64
    probabilities ``[C]`` summing to one. Empty classes are an error (their probability is
    undefined).
    """
    counts = _counts(class_counts).to(torch.float64)
    if bool((counts == 0).any()):
        raise DataError(
            "class_sampling_probabilities: a class has no training sample; drop empty classes first"
        )
    n1 = counts.max()
    scores = n1 / counts.pow(tau)
    return scores / scores.sum()


# --------------------------------------------------------------------------------------------
# DC (few-shot distribution calibration), as a baseline in LADC's ablation


def dc_calibration_terms(
    features: torch.Tensor, means: torch.Tensor, base_mask: torch.Tensor, k: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DC's calibrated Gaussians (Eq. 5-6, :func:`dc_calibrate`) in factored form:
    ``(means' [M, D], classes [M, k'], weights [M, k'])`` with
    ``Sigma' = sum_j weights[:, j] Sigma_{classes[:, j]}`` (``1/k`` on each support class), to which
    the caller adds ``alpha K``. ``means [C, D]`` are the class means. Feed the result to
    :func:`~longtail.features.gaussian.sample_factored_gaussians`.
    """
    x = _as_rows(features, means)
    base = torch.as_tensor(base_mask, dtype=torch.bool, device=means.device).flatten()
    if base.shape[0] != means.shape[0] or not bool(base.any()):
        raise DataError(f"base_mask must be a [{means.shape[0]}] bool mask selecting at least one class")
    idx, valid, _ = _support(x, means, base, k)
    w = valid.to(x.dtype)
    kk = w.sum(1, keepdim=True)
    cal_means = ((w.unsqueeze(-1) * means[idx]).sum(1) + x) / (kk + 1)
    return cal_means, idx, w / kk


def dc_calibrate(
    features: torch.Tensor,
    stats: ClassStatistics,
    base_mask: torch.Tensor,
    k: int = 2,
    alpha: float = 0.21,
    dispersion: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DC (Yang, Liu & Xu 2021, Eq. 5-6): for each feature ``x̂``::

        S      = the k base classes with the smallest ||mu_i - x̂||  (Euclidean)
        mu'    = (sum_S mu_i + x̂) / (k + 1)
        Sigma' = sum_S Sigma_i / k + alpha

    Defaults are DC's (k = 2, alpha = 0.21, its miniImageNet/CUB setting). ``dispersion="all"``
    (default) adds ``alpha`` to every entry as DC's reference code does; ``"identity"`` adds
    ``alpha I``. In the long-tailed setting (LADC's Table 8) the base classes are the head classes:
    pass ``base_mask = head_tail_split(counts)``. If fewer than ``k`` base classes exist, ``k`` is
    the number available.

    Returns:
        ``(means [M, D], covs [M, D, D])``.
    """
    _check_option("dispersion", dispersion, _DISPERSIONS)
    means, classes, weights = dc_calibration_terms(features, stats.means, base_mask, k)
    return means, _add_dispersion(_mix_covariances(weights, classes, stats.covariances), alpha, dispersion)
