"""Batched multivariate Gaussian sampling with jittered Cholesky factors.

Shared by GLAG, LADC and DC: every calibration rule returns a stack of means ``[K, D]`` and
covariances ``[K, D, D]``; :func:`sample_gaussians` draws ``x = mu_k + L_k eps``,
``eps ~ N(0, I)``, with ``L_k L_k^T = Sigma_k + jitter_k I`` (Cholesky factor).

Jitter rule (:func:`cholesky_with_jitter`): a covariance estimated from fewer samples than
dimensions, or a calibrated mixture of such, is only positive *semi*-definite, and the Cholesky
factorisation of a singular matrix fails. All matrices are first factorised as they are (no
jitter). The ones that fail get ``jitter * s_k * I`` added, where ``s_k = trace(Sigma_k) / D``
is their mean diagonal (``1`` when that is zero, e.g. an all-zero covariance), and the jitter
grows ×10 on each further failure, for at most ``max_tries`` jittered attempts
(defaults: ``jitter = 1e-5``, ``max_tries = 6``, i.e. up to ``1`` × the mean variance). This is
the rule of GPyTorch's ``psd_safe_cholesky``, made relative to the matrix's scale so it behaves the
same for raw and Tukey-transformed features. Only the failing matrices are retried, in one
batched call per try.

:func:`sample_factored_gaussians` draws from Gaussians whose covariance is a weighted sum of class
covariances plus a dispersion term, ``Sigma_r = sum_j w_rj Sigma_{c_rj} + d_r K`` (``K = I`` or the
all-ones matrix), the form of GLAG's and LADC's calibrated covariances, from per-class square-root
factors ``F_c`` (``F_c^T F_c = Sigma_c``; :class:`~longtail.features.statistics.FactoredStatistics`)::

    x = mu_r + sum_j sqrt(w_rj) F_{c_rj}^T eps_j + sqrt(d_r) eps_0,   eps_j, eps_0 independent N(0, I)

which is exactly ``N(mu_r, Sigma_r)`` (independent Gaussians add their covariances). No
``D x D`` matrix is formed or factorised per row; the work is one ``[m, r_c] @ [r_c, D]`` product
per class ``c`` over the ``m`` draws that use it.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["cholesky_with_jitter", "sample_gaussians", "sample_factored_gaussians"]


def cholesky_with_jitter(
    covariances: torch.Tensor, jitter: float = 1e-5, max_tries: int = 6
) -> torch.Tensor:
    """Lower Cholesky factors ``L [K, D, D]`` of stacked covariances ``[K, D, D]`` (or one ``[D, D]``).

    Uses ``torch.linalg.cholesky_ex`` on the whole stack and retries only the matrices that are
    not positive definite, adding ``jitter * 10**t * mean_diag * I`` on try ``t = 0, 1, ...``
    (see the module docstring). Half-precision inputs are factorised in float32.
    Raises ``ValueError`` if a matrix is not finite or is still not factorable after
    ``max_tries`` jittered attempts.
    """
    single = covariances.dim() == 2
    covs = covariances.unsqueeze(0) if single else covariances
    if covs.dim() != 3 or covs.shape[-1] != covs.shape[-2]:
        raise ValueError(f"covariances must be [K, D, D] or [D, D], got {tuple(covariances.shape)}")
    if covs.dtype not in (torch.float32, torch.float64):
        covs = covs.float()
    if not bool(torch.isfinite(covs).all()):
        raise ValueError(
            "cholesky_with_jitter: covariances contain NaN or inf; check the features (e.g. log of "
            "zero in tukey_transform with lam=0) and the calibration inputs"
        )
    D = covs.shape[-1]
    L, info = torch.linalg.cholesky_ex(covs)
    failed = torch.nonzero(info > 0).flatten()
    if failed.numel() == 0:
        return L[0] if single else L
    eye = torch.eye(D, dtype=covs.dtype, device=covs.device)
    scale = torch.diagonal(covs[failed], dim1=-2, dim2=-1).mean(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    for t in range(max_tries):
        eps = jitter * (10.0**t) * scale
        L_f, info_f = torch.linalg.cholesky_ex(covs[failed] + eps.view(-1, 1, 1) * eye)
        ok = info_f == 0
        L[failed[ok]] = L_f[ok]
        failed, scale = failed[~ok], scale[~ok]
        if failed.numel() == 0:
            return L[0] if single else L
    raise ValueError(
        f"cholesky_with_jitter: {failed.numel()} covariance(s) not positive definite even with jitter "
        f"{jitter * 10.0 ** (max_tries - 1):g} x mean variance (rows {failed[:10].tolist()}); raise "
        "jitter/max_tries, or add a dispersion term (alpha/gamma) to the calibration"
    )


def sample_gaussians(
    means: torch.Tensor,
    covariances: torch.Tensor,
    num_samples: int | torch.Tensor,
    generator: torch.Generator | None = None,
    jitter: float = 1e-5,
    max_tries: int = 6,
    chunk_elements: int = 1 << 26,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` features from each Gaussian ``N(means[k], covariances[k])``.

    Args:
        means: ``[K, D]``.
        covariances: ``[K, D, D]`` symmetric positive semi-definite.
        num_samples: samples per row: an int (same for every row) or an integer tensor ``[K]``
            (zero allowed).
        generator: ``torch.Generator`` on the means' device, for reproducible draws.
        jitter, max_tries: the Cholesky jitter rule (module docstring).
        chunk_elements: rows are processed in groups whose zero-padded noise block
            ``[rows, max_count, D]`` holds at most this many elements (at least one row per group).

    Returns:
        ``(samples [S, D], row_ids [S])`` with ``S = sum(num_samples)``; samples of row ``k`` are
        contiguous, in row order, and ``row_ids`` (int64) says which row each sample came from.
        ``samples = mu_k + eps @ L_k^T`` with ``eps ~ N(0, I)`` drawn from ``generator``; a draw is
        reproducible for the same generator state and the same ``chunk_elements``.
    """
    if means.dim() != 2 or covariances.shape != (means.shape[0], means.shape[1], means.shape[1]):
        raise ValueError(
            f"means must be [K, D] and covariances [K, D, D]; got {tuple(means.shape)} and "
            f"{tuple(covariances.shape)}"
        )
    K, D = means.shape
    device = means.device
    dtype = means.dtype if means.dtype in (torch.float32, torch.float64) else torch.float32
    if isinstance(num_samples, int):
        counts = torch.full((K,), num_samples, dtype=torch.long, device=device)
    else:
        counts = torch.as_tensor(num_samples, device=device).long().flatten()
        if counts.shape[0] != K:
            raise ValueError(f"num_samples has {counts.shape[0]} entries for {K} Gaussians")
    if bool((counts < 0).any()):
        raise ValueError("num_samples must be non-negative")
    row_ids = torch.repeat_interleave(torch.arange(K, device=device), counts)
    total = row_ids.shape[0]
    samples = torch.empty(total, D, dtype=dtype, device=device)
    if total == 0:
        return samples, row_ids
    active = torch.nonzero(counts > 0).flatten()  # rows with at least one sample
    L = cholesky_with_jitter(covariances[active].to(dtype), jitter=jitter, max_tries=max_tries)
    mu = means[active].to(dtype)
    cnt = counts[active]
    cnt_cpu = cnt.cpu().tolist()
    out_start = 0
    start = 0
    A = active.shape[0]
    while start < A:
        end = start + 1
        n_max = cnt_cpu[start]
        while end < A:
            n_next = max(n_max, cnt_cpu[end])
            if (end + 1 - start) * n_next * D > chunk_elements:
                break
            n_max = n_next
            end += 1
        eps = torch.randn(end - start, n_max, D, generator=generator, dtype=dtype, device=device)
        block = mu[start:end].unsqueeze(1) + torch.bmm(eps, L[start:end].transpose(1, 2))
        mask = torch.arange(n_max, device=device).unsqueeze(0) < cnt[start:end].unsqueeze(1)
        chunk = block[mask]  # row-major: row start's samples first
        samples[out_start : out_start + chunk.shape[0]] = chunk
        out_start += chunk.shape[0]
        start = end
    return samples, row_ids


def sample_factored_gaussians(
    means: torch.Tensor,
    classes: torch.Tensor,
    weights: torch.Tensor,
    factors: Sequence[torch.Tensor],
    num_samples: int | torch.Tensor,
    dispersion: float | torch.Tensor = 0.0,
    mode: str = "identity",
    generator: torch.Generator | None = None,
    chunk_elements: int = 1 << 26,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` features from each ``N(means[r], sum_j weights[r, j] Sigma_{classes[r, j]}
    + dispersion[r] K)`` exactly, with ``Sigma_c = factors[c]^T factors[c]`` (module docstring).

    Args:
        means: ``[M, D]``.
        classes: ``[M, J]`` class ids of the covariance terms (any valid id where the weight is 0).
        weights: ``[M, J]`` non-negative variance weights ``w_rj``.
        factors: per class ``F_c [r_c, D]`` (e.g. ``FactoredStatistics.factors``).
        num_samples: an int or an integer tensor ``[M]`` (zero allowed).
        dispersion: ``d`` as a float or a ``[M]`` tensor (variances, >= 0).
        mode: ``"identity"`` (``K = I``) or ``"all"`` (``K = 1 1^T``: one shared scalar draw).
        generator: ``torch.Generator`` on the means' device, for reproducible draws.
        chunk_elements: at most this many noise elements ``[m, r_c]`` are drawn at once.

    Returns:
        ``(samples [S, D], row_ids [S])`` as :func:`sample_gaussians`: row ``r``'s samples are
        contiguous, in row order.
    """
    if mode not in ("identity", "all"):
        raise ValueError(f"mode must be 'identity' or 'all', got {mode!r}")
    M, D = means.shape
    if classes.shape != weights.shape or classes.dim() != 2 or classes.shape[0] != M:
        raise ValueError(f"classes and weights must both be [{M}, J], got {tuple(classes.shape)} and {tuple(weights.shape)}")
    device = means.device
    dtype = means.dtype if means.dtype in (torch.float32, torch.float64) else torch.float32
    counts = torch.as_tensor(num_samples, device=device).long().flatten()
    counts = counts.expand(M) if counts.numel() == 1 else counts
    if counts.shape[0] != M:
        raise ValueError(f"num_samples has {counts.shape[0]} entries for {M} Gaussians")
    if bool((counts < 0).any()) or bool((weights < 0).any()):
        raise ValueError("num_samples and weights must be non-negative")
    row_ids = torch.repeat_interleave(torch.arange(M, device=device), counts)
    out = means.to(dtype).index_select(0, row_ids)
    S, J = out.shape[0], classes.shape[1]
    if S == 0:
        return out, row_ids
    # one (sample, class, scale) triple per non-zero covariance term, grouped by class
    pair_class = classes.to(device).long()[row_ids].flatten()
    pair_scale = weights.to(device=device, dtype=dtype)[row_ids].flatten().sqrt()
    pair_sample = torch.arange(S, device=device).repeat_interleave(J)
    keep = pair_scale > 0
    pair_class, pair_scale, pair_sample = pair_class[keep], pair_scale[keep], pair_sample[keep]
    order = torch.argsort(pair_class, stable=True)
    pair_scale, pair_sample = pair_scale[order], pair_sample[order]
    start = 0
    for c, m in enumerate(torch.bincount(pair_class, minlength=len(factors)).tolist()):
        rank = factors[c].shape[0]
        if m and rank:
            F = factors[c].to(device=device, dtype=dtype)
            step = max(1, chunk_elements // rank)
            for a in range(start, start + m, step):
                b = min(a + step, start + m)
                eps = torch.randn(b - a, rank, generator=generator, dtype=dtype, device=device)
                out.index_add_(0, pair_sample[a:b], (eps @ F) * pair_scale[a:b, None])
        start += m
    spread = torch.as_tensor(dispersion, dtype=dtype, device=device).expand(M)
    if bool((spread < 0).any()):
        raise ValueError("dispersion must be non-negative")
    if bool((spread > 0).any()):
        width = D if mode == "identity" else 1
        out += spread.sqrt()[row_ids, None] * torch.randn(S, width, generator=generator, dtype=dtype, device=device)
    return out, row_ids
