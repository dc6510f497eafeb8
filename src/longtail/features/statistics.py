"""Per-class feature statistics and Tukey's ladder of powers.

One implementation serves every feature-level method that fits a Gaussian per class:
GLAG's adaptive feature generator (Eq. 5-6 of the GLAG paper), LADC (Eq. 2-3 of Wang et al.
2021, "Label-aware distribution calibration for long-tailed classification") and DC (Yang,
Liu & Xu 2021, "Free lunch for few-shot learning: distribution calibration").

For class ``k`` with the ``n_k`` (transformed) features ``x_i``, ``i in D_k``::

    mu_k    = 1/n_k       * sum_i x_i
    Sigma_k = 1/(n_k - 1) * sum_i (x_i - mu_k)(x_i - mu_k)^T      (unbiased, the papers' form)
    Sigma_k = 1/n_k       * sum_i (x_i - mu_k)(x_i - mu_k)^T      (unbiased=False)

Everything runs on the device the features live on, for all classes at once.

:class:`FactoredStatistics` keeps, instead of the ``[C, D, D]`` covariances, one exact square-root
factor per class, ``F_k [r_k, D]`` with ``F_k^T F_k = Sigma_k`` and ``r_k = min(n_k, D)``: samplers
draw ``F_k^T eps`` (``eps ~ N(0, I_{r_k})``) without a Cholesky factorisation or jitter, and memory
is at most ``N x D`` instead of ``C x D x D``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import DataError

__all__ = ["tukey_transform", "inverse_tukey", "ClassStatistics", "FactoredStatistics"]

TUKEY_EPS = 1e-6  # keeps log(0) finite for lam = 0


def tukey_transform(x: torch.Tensor, lam: float = 0.5, eps: float = TUKEY_EPS) -> torch.Tensor:
    """Tukey's ladder of powers (Tukey 1977), as used by DC, GLAG and LADC before Gaussian fitting.

    ``x -> x ** lam`` for ``lam > 0`` and ``x -> log(x + eps)`` for ``lam == 0``
    (the ``eps`` keeps the zeros that ReLU features contain finite; it is not used for
    ``lam > 0``). ``lam = 0.5`` (square root) is the default of DC and the papers that follow it;
    ``lam = 1`` is the identity. The transform makes skewed, non-negative feature distributions
    closer to Gaussian. Negative powers are not supported (ReLU features contain zeros).

    Raises :class:`DataError` if any feature is negative: the power of a negative number is not
    real. Apply the transform to post-ReLU (non-negative) features, e.g. the pooled output of a
    ResNet, not to pre-activation or normalised features.
    """
    if lam < 0:
        raise ValueError(
            f"tukey_transform: lam must be >= 0 (got {lam}); use lam=0.5 (square root, the default) "
            "or lam=0 (log)"
        )
    if not torch.is_floating_point(x):
        x = x.float()
    if bool((x < 0).any()):
        raise DataError(
            f"tukey_transform: features must be non-negative, but the smallest is {x.min().item():.4g}; "
            "apply it after ReLU (e.g. on pooled ResNet features), or pass lam=1 to skip the transform"
        )
    if lam == 0:
        return torch.log(x + eps)
    if lam == 1:
        return x.clone()
    return torch.pow(x, lam)


class _PerClass:
    """Shape properties shared by the per-class statistics (``means [C, D]``)."""

    means: torch.Tensor

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device


def inverse_tukey(u: torch.Tensor, lam: float, eps: float = TUKEY_EPS) -> torch.Tensor:
    """Back from Tukey space (the inverse of :func:`tukey_transform`, for generated features):
    ``max(u, 0)^(1/lam)`` (``lam > 0``), ``max(exp(u) - eps, 0)`` (``lam = 0``), identity
    (``lam = 1``). Negative draws map to 0, the floor of ReLU features."""
    if lam == 1:
        return u
    if lam == 0:
        return (torch.exp(u) - eps).clamp(min=0.0)
    return u.clamp(min=0.0).pow(1.0 / lam)


@dataclass
class ClassStatistics(_PerClass):
    """Mean, covariance and count of the features of every class.

    Attributes:
        means: ``[C, D]`` class means (zero for a class without features).
        covariances: ``[C, D, D]`` class covariances (zero for a class with fewer than two
            features when ``unbiased``; zero for an empty class).
        counts: ``[C]`` int64 number of features per class.
    """

    means: torch.Tensor
    covariances: torch.Tensor
    counts: torch.Tensor

    def __post_init__(self) -> None:
        C, D = self.means.shape
        if self.covariances.shape != (C, D, D) or self.counts.shape != (C,):
            raise DataError(
                f"ClassStatistics: shapes do not agree: means {tuple(self.means.shape)}, covariances "
                f"{tuple(self.covariances.shape)}, counts {tuple(self.counts.shape)}; expected "
                "[C, D], [C, D, D] and [C]"
            )


    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ClassStatistics":
        """A copy on ``device`` (means and covariances also cast to ``dtype`` if given)."""
        return ClassStatistics(
            self.means.to(device=device, dtype=dtype),
            self.covariances.to(device=device, dtype=dtype),
            self.counts.to(device=device),
        )

    @classmethod
    def from_features(
        cls,
        features: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        unbiased: bool = True,
        chunk_elements: int = 1 << 27,
    ) -> "ClassStatistics":
        """Statistics of ``features [N, D]`` grouped by ``labels [N]`` (values in ``0..num_classes-1``).

        Computed for all classes at once on the features' device: counts by ``bincount``, means by
        ``index_add_``, then the centred features are scattered into a zero-padded
        ``[C, n_max, D]`` tensor (rows sorted by class) and the scatter matrices come from one
        ``bmm``. Centring before the outer products avoids the cancellation of the
        ``E[xx^T] - mu mu^T`` form. ``chunk_elements`` bounds the padded tensor: classes are
        processed in groups whose padded block and ``[group, D, D]`` product each hold at most that
        many elements (a single class larger than that is processed alone); the only full-size
        allocation is the ``[C, D, D]`` result. The matrix products run at full fp32 precision
        (TF32 is switched off for the call). Half-precision inputs are accumulated in float32.

        ``unbiased=True`` divides by ``n_k - 1`` (Eq. 6 of GLAG, Eq. 3 of LADC); a class with a
        single feature then gets a zero covariance (the estimate is undefined; zero means "no
        spread observed", and the calibration rules add their dispersion term on top).
        """
        if features.dim() != 2:
            raise DataError(f"features must be [N, D], got shape {tuple(features.shape)}; flatten them first")
        labels = torch.as_tensor(labels, device=features.device).long().flatten()
        if labels.shape[0] != features.shape[0]:
            raise DataError(
                f"features ({features.shape[0]} rows) and labels ({labels.shape[0]}) differ in length"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DataError(
                f"labels must lie in 0..{num_classes - 1}, got range {int(labels.min())}..{int(labels.max())}; "
                "pass the right num_classes or remap the labels"
            )
        x = features if features.dtype in (torch.float32, torch.float64) else features.float()
        N, D = x.shape
        C = num_classes
        counts = torch.bincount(labels, minlength=C)
        sums = torch.zeros(C, D, dtype=x.dtype, device=x.device).index_add_(0, labels, x)
        means = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        centred = x - means[labels]

        # rows sorted by class; position of each row inside its class
        order = torch.argsort(labels, stable=True)
        sorted_labels = labels[order]
        sorted_centred = centred[order]
        offsets = torch.cumsum(counts, 0) - counts
        pos = torch.arange(N, device=x.device) - offsets[sorted_labels]

        # the only [C, D, D] allocation: chunks are divided and symmetrised before being written
        covariances = torch.zeros(C, D, D, dtype=x.dtype, device=x.device)
        denom = ((counts - 1) if unbiased else counts).clamp(min=1).to(x.dtype)
        counts_cpu = counts.cpu()
        ends_cpu = torch.cumsum(counts_cpu, 0).tolist()  # sorted rows of class c end at ends_cpu[c]
        prev_precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            start = 0
            while start < C:
                # grow the group of classes while its padded block fits the budget
                end = start + 1
                n_max = int(counts_cpu[start])
                while end < C:
                    n_next = max(n_max, int(counts_cpu[end]))
                    if (end + 1 - start) * max(n_next, D) * D > chunk_elements:
                        break
                    n_max = n_next
                    end += 1
                if n_max > 0:
                    lo = ends_cpu[start] - int(counts_cpu[start])
                    hi = ends_cpu[end - 1]
                    padded = torch.zeros(end - start, n_max, D, dtype=x.dtype, device=x.device)
                    padded[sorted_labels[lo:hi] - start, pos[lo:hi]] = sorted_centred[lo:hi]
                    block = torch.bmm(padded.transpose(1, 2), padded)
                    del padded
                    block = 0.5 * (block + block.transpose(1, 2))  # exact symmetry
                    covariances[start:end] = block / denom[start:end].view(-1, 1, 1)
                start = end
        finally:
            torch.set_float32_matmul_precision(prev_precision)
        return cls(means, covariances, counts)


@dataclass
class FactoredStatistics(_PerClass):
    """Mean, count and an exact square-root factor of the covariance (Eq. 6) of every class.

    ``factors[k]`` is ``F_k [r_k, D]`` with ``F_k^T F_k = Sigma_k`` (the unbiased covariance, or the
    ``1/n_k`` one with ``unbiased=False``), so ``F_k^T eps``, ``eps ~ N(0, I_{r_k})``, is an exact
    draw from ``N(0, Sigma_k)`` even where ``Sigma_k`` is singular (``n_k <= D``: always):

    * ``n_k <= D``: ``F_k = (X_k - mu_k) / sqrt(n_k - 1)``, the centred features themselves
      (``r_k = n_k``; a class with one feature gets a zero row, i.e. a zero covariance, as in
      :class:`ClassStatistics`; an empty class gets ``[0, D]``);
    * ``n_k > D``: ``F_k = R_k / sqrt(n_k - 1)`` with ``R_k [D, D]`` the triangular factor of the QR
      decomposition of the centred features (``R^T R = (X - mu)^T (X - mu)``; ``r_k = D``).

    Attributes:
        means: ``[C, D]``; counts: ``[C]`` int64; factors: ``C`` tensors ``[r_k, D]``.
    """

    means: torch.Tensor
    counts: torch.Tensor
    factors: list[torch.Tensor]


    @classmethod
    def from_features(
        cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int, unbiased: bool = True
    ) -> "FactoredStatistics":
        """Statistics of ``features [N, D]`` grouped by ``labels [N]`` (same checks and conventions
        as :meth:`ClassStatistics.from_features`), on the features' device."""
        if features.dim() != 2:
            raise DataError(f"features must be [N, D], got shape {tuple(features.shape)}; flatten them first")
        labels = torch.as_tensor(labels, device=features.device).long().flatten()
        if labels.shape[0] != features.shape[0]:
            raise DataError(f"features ({features.shape[0]} rows) and labels ({labels.shape[0]}) differ in length")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DataError(f"labels must lie in 0..{num_classes - 1}; pass the right num_classes or remap the labels")
        x = features if features.dtype in (torch.float32, torch.float64) else features.float()
        D = x.shape[1]
        counts = torch.bincount(labels, minlength=num_classes)
        sums = torch.zeros(num_classes, D, dtype=x.dtype, device=x.device).index_add_(0, labels, x)
        means = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        order = torch.argsort(labels, stable=True)
        centred = (x - means[labels])[order]
        factors = []
        for n, rows in zip(counts.tolist(), torch.split(centred, counts.tolist())):
            scale = 1.0 / math.sqrt(max(n - 1 if unbiased else n, 1))
            if n > D:
                rows = torch.linalg.qr(rows, mode="r").R
            factors.append(rows * scale)
        return cls(means, counts, factors)

    def variances(self) -> torch.Tensor:
        """The ``[C, D]`` diagonals of the covariances, ``sum_r F_k[r]^2``, without forming them."""
        return torch.stack([(f * f).sum(0) for f in self.factors])

    def covariances(self) -> torch.Tensor:
        """The dense ``[C, D, D]`` covariances ``F_k^T F_k`` (checks and small problems)."""
        return torch.stack([f.T @ f for f in self.factors])

    def dense(self) -> ClassStatistics:
        """The same statistics as a :class:`ClassStatistics` (dense covariances)."""
        return ClassStatistics(self.means, self.covariances(), self.counts)
