r"""GHM-CWAP: gradient harmonized mechanism with category-wise adaptive precision.

Zhang, Lin, Zhang and Xu, "Solving the long-tailed problem via intra- and inter-category
balance" (seed paper ``002_351d9e06627295d3``), built on GHM-C (Li, Liu and Wang, "Gradient
harmonized single-stage detector", AAAI 2019).

For a sample of class ``y`` the gradient norm is ``g = 1 - p_y`` (detached). Every class ``c``
keeps its own histogram of ``g`` over ``N`` regions (``N = 30``) with widths ``d_{c,i}``;
``k_{c,i}`` is the number of examples counted in region ``i`` and ``v_{c,i} = k_{c,i} / (N d_{c,i})``
its value (Algorithm 1 adds ``1/(N d_i)`` per example: a density, equal to ``k`` for equal widths).

* Effective size (Sec. 3.2): ``S_c = sum_i k_{c,i}^alpha`` (``alpha = 0.9``).
* Intra-category balance "R", Eq. (1): ``W_{c,i} proportional to v_{c,i}^-alpha`` inside class c.
* Inter-category balance "A", Eq. (2): ``M_{m,n} = gamma log min(1, S_n / S_m)`` (``gamma = 0.8``)
  added to logit ``z_n`` of a class-``m`` sample (``M_{m,m} = 0``).
* Loss, Eq. (3): ``L = -W_{m,i} log( e^{z_m} / sum_n e^{z_n + M_{m,n}} )``.
* Regions (Sec. 3.3): URA = ``N`` equal widths; AURA = Algorithm 1, after each epoch
  ``d_i <- 1/log(v_i)`` normalised to sum 1, per class.

Choices (the paper is silent or ambiguous; every alternative is a named option):

1. **R harmonises inside each category** (``intra_weight="category"``, default). The paper says R
   "harmonizes the easy and hard examples in each category separately" and leaves the correction
   between classes to the margins. GHM-C's weight ``beta = tot / (n * count)`` (``tot`` the valid
   examples, ``n`` the non-empty regions) has mean 1 over the examples it is computed on; computed
   per category with the effectiveness exponent it is
   ``W_{c,i} = v_{c,i}^-alpha / E_c[v^-alpha]``, ``E_c[v^-alpha] = sum_i k_{c,i} v_{c,i}^-alpha / sum_i k_{c,i}``,
   so every class's mean weight is 1 (R changes no class's total weight; for ``alpha = 1`` and URA it
   is GHM-C's ``n_c / (n_valid,c k_{c,i})`` exactly; one region gives ``W = 1``). Eq. (1)'s factor
   ``S_c`` is a per-class constant, divided out by this normalisation.
   Measured on images, 20 Newsgroups-LT and a natural tail (benchmarks/README.md, "GHM-CWAP on
   three kinds of data"): this R lowers accuracy on all three, because it gives every class's hard
   examples about half of the class's weight whatever their number, which favours the head at the
   boundary; ``intra=False`` (the margins alone) is the reading that beats Seesaw there.
   ``"printed"``: ``W = S_c / v^alpha`` as printed (the class size multiplies every weight of the
   class). ``"global"``: ``W = S / v^alpha`` with one ``S = sum_c S_c`` (an inverse-frequency class
   re-weighting on top of the margins: ``~ n_c^-alpha`` for a class in one region).
2. **Histogram window** (``histogram="window"``, default). GHM-C computes its weights from a
   moving average of the bin counts that includes the current batch (``acc <- mu acc + (1-mu) count``).
   Per category the same: before each step class c's histogram decays by ``1 - b_c / n_c`` (``b_c``
   its examples in the batch), then the batch is counted and the weights recomputed, so the
   histogram always spans about the class's last ``n_c`` examples (one epoch's worth, the span of
   Algorithm 1) and includes the sample being weighted. ``"epoch"`` uses the counts of the previous
   epoch as printed: early in training they lag the model by a whole epoch, and examples that have
   just become easy sit in regions that were sparse, so they get the largest weights.
   AURA's regions change once per epoch in both (from the epoch's counts, Algorithm 1); the window
   is re-binned onto the new regions assuming a uniform density inside each region.
3. **Gradient norm** ``g = 1 - softmax(z)_y`` of the plain logits (``grad_norm="plain"``) or of the
   margin-adjusted ones (``"adjusted"``).
4. **S_c from counts** (``effective_size="counts"``); ``"values"`` builds it from Algorithm 1's
   densities, under which AURA's narrow regions inflate a class's size.
5. **Two boundary sets.** ``W`` and ``S`` use the histogram in use (``hist``) looked up with the
   boundaries it is held on (``edges``); the running epoch counts with ``edges_cur``. A class with no
   example in an epoch keeps its histogram, so the epoch roll is idempotent.
6. **Warm start** (``warm_start="uniform"``): before any counting each class holds ``n_c / N``
   examples per equal region, so ``W = 1`` (category reading) and the first-epoch margins are
   ``gamma alpha log min(1, n_n / n_m)``; ``"ce"``: ``W = 1``, ``M = 0`` in the first epoch.
7. **Guards.** AURA's ``d <- 1/log(max(v, aura_floor))`` (``aura_floor = e``) keeps widths finite
   for ``v <= 1``; in ``W`` a region holding less than one example (empty, or a decayed remnant of
   the window) is valued as one example (``v = 1/(N d)``; before the first epoch is counted, as the warm
   start's ``n_c / N`` for a class of fewer than ``N`` examples), so ``v^-alpha`` stays finite and bounded; ``S`` is clamped to at
   least 1 in the margins.
8. **Scale** (``normalize_weights``): ``"class"`` (the default for the category reading) divides
   each class's weights in the batch by their mean over the class's examples in that batch, GHM-C's
   division by the valid total and the non-empty regions computed on the batch: every class keeps
   its count in every batch as its total weight, a lone example weighs 1 and no weight exceeds the
   class's examples in the batch (the window estimates the density, the batch normalises it).
   ``"none"`` uses ``W`` as it is (class means 1 over the window only: a hard example of a large
   class can weigh hundreds); ``"batch"`` divides by the batch mean (the default for the printed and
   global readings, whose scale drifts with ``S``).
9. **Cap** (``max_weight``, ours, off by default): category weights above the cap are clipped and
   the class renormalised to mean 1 (measured with the readings of choice 1).

Counting happens in training mode with autograd on (not under evaluation), repeats counted as
drawn. CUDA-graph safe: ``per_sample`` gathers from per-epoch tables and ``index_add_``s into the
current histogram; the epoch roll is vectorised with in-place updates. Under data parallelism the
ranks' counts are summed before the roll.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import ConfigError, UnknownNameError
from .base import LOSSES, Loss, counts_tensor

_REGIONS = ("aura", "ura")
_WARM_STARTS = ("uniform", "ce")
_NORMALIZE = {"auto": "auto", True: "batch", False: "none", "batch": "batch", "class": "class", "none": "none"}
_GRAD_NORMS = ("plain", "adjusted")
_INTRA_WEIGHTS = ("category", "global", "printed")
_HISTOGRAMS = ("window", "epoch")
_EFFECTIVE_SIZES = ("counts", "values")

# Rows of the paper's ablation (Table 3). "A^AURA" (inter only, AURA) is not a row of the
# table but completes the grid; "softmax" is the plain cross-entropy row.
_VARIANTS: dict[str, dict[str, Any]] = {
    "SOFTMAX": dict(intra=False, inter=False, regions="ura"),
    "R": dict(intra=True, inter=False, regions="ura"),
    "A^URA": dict(intra=False, inter=True, regions="ura"),
    "A^AURA": dict(intra=False, inter=True, regions="aura"),
    "R+A^URA": dict(intra=True, inter=True, regions="ura"),
    "R+A^AURA": dict(intra=True, inter=True, regions="aura"),
}


def ghm_cwap_variant(name: str) -> dict[str, Any]:
    """Constructor options of a named row of the paper's ablation (Table 3).

    ``"R"`` intra-category balance only (URA, as in GHM), ``"A^URA"`` inter-category balance
    only with URA, ``"R+A^URA"`` both with URA, ``"R+A^AURA"`` both with AURA (the full method,
    the constructor's defaults), plus ``"A^AURA"`` and ``"softmax"``.  Case, spaces, braces and
    ``_`` for ``^`` are ignored: ``"r+a_{aura}"`` works.

    The labels follow Table 3's caption ("R" intra-, "A" inter-category balance).  The paper's
    own evidence points the other way: its R row is digit for digit the Seesaw row of Table 2
    (Seesaw is an inter-category margin, and ``gamma`` is taken from it), R brings the large
    tail gain that Sec. 4.3 credits to inter-category balance while A^URA brings the small
    head-and-tail gain credited to intra-category balance, and Sec. 3.3 introduces AURA as the
    precision of GHM's approximation.  Under that reading only the single-module rows swap
    (R = ``"A^URA"`` here and A^URA = ``"R"`` here); the combined rows are the same either way.
    """
    key = name.upper().replace(" ", "").replace("{", "").replace("}", "").replace("_", "^")
    if key not in _VARIANTS:
        from ..registry import closest

        raise UnknownNameError(
            f"unknown GHM-CWAP variant {name!r}{closest(key, _VARIANTS)}; "
            f"valid names: {', '.join(_VARIANTS)}"
        )
    return dict(_VARIANTS[key])


def rebin(hist: torch.Tensor, edges_from: torch.Tensor, edges_to: torch.Tensor) -> torch.Tensor:
    """Counts ``hist`` [C, N] held on ``edges_from`` [C, N+1], moved onto ``edges_to`` [C, N+1]
    assuming a uniform density inside each source region (mass is kept)."""
    cdf = torch.cat([torch.zeros_like(hist[:, :1]), hist.cumsum(1)], 1)  # at edges_from
    j = torch.searchsorted(edges_from.contiguous(), edges_to.contiguous(), right=True).sub_(1)
    j = j.clamp_(0, hist.shape[1] - 1)
    left = edges_from.gather(1, j)
    width = (edges_from.gather(1, j + 1) - left).clamp_min(1e-12)
    frac = ((edges_to - left) / width).clamp(0.0, 1.0)
    at = cdf.gather(1, j) + hist.gather(1, j) * frac
    return (at[:, 1:] - at[:, :-1]).clamp_min(0.0)


@LOSSES.register("ghm_cwap")
class GHMCWAPLoss(Loss):
    """GHM-CWAP loss (intra-category GHM weights + inter-category margins), Eqs. (1)-(3).

    Args:
        class_counts: training examples per class (warm start, and the window of choice 2).
        num_regions: ``N`` regions per class histogram (paper: 30).
        alpha: effectiveness factor ``alpha`` (paper: 0.9).
        gamma: margin scale ``gamma`` in Eq. (2) (paper: 0.8).
        intra: apply the intra-category weights ``W`` ("R" in Table 3).
        inter: apply the inter-category margins ``M`` ("A" in Table 3).
        regions: ``"aura"`` (Algorithm 1, paper default) or ``"ura"`` (equal widths).
        intra_weight: ``"category"`` (class mean 1; default), ``"printed"`` or ``"global"`` (choice 1).
        histogram: ``"window"`` (moving average over steps; default) or ``"epoch"`` (choice 2).
        warm_start: first-epoch histogram, ``"uniform"`` or ``"ce"`` (choice 6).
        normalize_weights: ``"auto"`` (class for the category reading, batch otherwise),
            ``"class"``, ``"batch"``/``True`` or ``"none"``/``False`` (choice 8).
        max_weight: cap on the category weights (ours; ``None`` = off, choice 9).
        grad_norm: ``"plain"`` or ``"adjusted"`` (choice 3).
        aura_floor: the guard of ``d <- 1/log(max(v, aura_floor))``; must be > 1 (default ``e``).
        effective_size: ``"counts"`` (default) or ``"values"`` (choice 4).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        num_regions: int = 30,
        alpha: float = 0.9,
        gamma: float = 0.8,
        intra: bool = True,
        inter: bool = True,
        regions: str = "aura",
        intra_weight: str = "category",
        histogram: str = "window",
        warm_start: str = "uniform",
        normalize_weights: bool | str = "auto",
        max_weight: float | None = None,
        grad_norm: str = "plain",
        aura_floor: float = math.e,
        effective_size: str = "counts",
    ) -> None:
        super().__init__()
        counts = counts_tensor(class_counts)
        if int(num_regions) != num_regions or num_regions < 1:
            raise ConfigError(f"num_regions must be a positive integer, got {num_regions!r}")
        if not alpha >= 0:
            raise ConfigError(f"alpha must be >= 0 (paper: 0.9), got {alpha!r}")
        if not gamma >= 0:
            raise ConfigError(f"gamma must be >= 0 (paper: 0.8), got {gamma!r}")
        if histogram not in _HISTOGRAMS:
            raise ConfigError(
                f"histogram must be 'window' (moving average over the steps: the default) or 'epoch' "
                f"(the previous epoch's counts, Algorithm 1), got {histogram!r}"
            )
        if max_weight is not None and not max_weight > 1:
            raise ConfigError(f"max_weight must be > 1 (a cap on weights whose class mean is 1) or null, got {max_weight!r}")
        if regions not in _REGIONS:
            raise ConfigError(f"regions must be one of {_REGIONS}, got {regions!r}")
        if warm_start not in _WARM_STARTS:
            raise ConfigError(f"warm_start must be one of {_WARM_STARTS}, got {warm_start!r}")
        if not isinstance(normalize_weights, (bool, str)) or normalize_weights not in _NORMALIZE:
            raise ConfigError(
                f"normalize_weights must be 'auto', True/'batch', 'class' or False/'none', got {normalize_weights!r}"
            )
        if grad_norm not in _GRAD_NORMS:
            raise ConfigError(f"grad_norm must be one of {_GRAD_NORMS}, got {grad_norm!r}")
        if not aura_floor > 1:
            raise ConfigError(f"aura_floor must be > 1 so that log(floor) > 0, got {aura_floor!r}")
        if intra_weight not in _INTRA_WEIGHTS:
            raise ConfigError(
                f"intra_weight must be 'category' (mean weight 1 in every class: the default), 'printed' "
                f"(W = S_c / v^alpha, Eq. 1 as printed) or 'global' (W = S / v^alpha), got {intra_weight!r}"
            )
        if effective_size not in _EFFECTIVE_SIZES:
            raise ConfigError(
                f"effective_size must be 'counts' (S_c from the examples counted per region: the default) or "
                f"'values' (from Algorithm 1's density values), got {effective_size!r}"
            )
        normalize = _NORMALIZE[normalize_weights]
        if normalize == "auto":
            normalize = "class" if intra_weight == "category" else "batch"

        self.num_classes = int(counts.numel())
        self.num_regions = int(num_regions)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.intra = bool(intra)
        self.inter = bool(inter)
        self.regions = regions
        self.intra_weight = intra_weight
        self.histogram = histogram
        self.warm_start = warm_start
        self.normalize_weights = normalize
        self.max_weight = None if max_weight is None else float(max_weight)
        self.grad_norm = grad_norm
        self.aura_floor = float(aura_floor)
        self.effective_size_from = effective_size

        C, N = self.num_classes, self.num_regions
        self.register_buffer("class_counts", counts)
        # examples per region: the histogram in use (on `edges`) and the running epoch's (on `edges_cur`)
        self.register_buffer("hist", torch.zeros(C, N))
        self.register_buffer("hist_cur", torch.zeros(C, N))
        self.register_buffer("edges", torch.zeros(C, N + 1))
        self.register_buffer("edges_cur", torch.zeros(C, N + 1))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))  # an epoch has been counted
        # tables read by per_sample (per epoch; per step with the window)
        self.register_buffer("effective_size", torch.zeros(C))  # S_c
        self.register_buffer("weight_table", torch.ones(C, N))  # W_{c,i}
        self.register_buffer("margin", torch.zeros(C, C))  # M_{m,n}, row m = sample's class
        self.reset()

    # ------------------------------------------------------------------ histogram state
    def _uniform_edges(self) -> torch.Tensor:
        edges = torch.linspace(0.0, 1.0, self.num_regions + 1, device=self.hist.device)
        return edges.expand(self.num_classes, -1)

    def _value(self, counts: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Algorithm 1's value ``v = k / (N d)`` of counts held on ``edges``."""
        return counts / (self.num_regions * (edges[:, 1:] - edges[:, :-1]))

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the state before the first epoch (equal widths, warm-start histogram)."""
        N = self.num_regions
        self.edges.copy_(self._uniform_edges())
        self.edges_cur.copy_(self._uniform_edges())
        self.hist_cur.zero_()
        self.started.zero_()
        self.hist.copy_((self.class_counts / N)[:, None].expand(-1, N))
        self._refresh_tables()

    def _effective_size(self, v: torch.Tensor) -> torch.Tensor:
        """``S_c = sum_i v_{c,i}^alpha`` of a ``[C, N]`` histogram; ``0**0`` counts as 0."""
        if self.alpha == 0:
            return (v > 0).sum(1).to(v.dtype)
        return v.pow(self.alpha).sum(1)

    def _intra_weights(self, k: torch.Tensor, v: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """``W_{c,i}`` from counts ``k`` and values ``v`` (choice 1); 1 for a class without counts."""
        warm = (self.class_counts / self.num_regions).clamp(max=1.0)[:, None]
        floor = torch.where(self.started, torch.ones_like(warm), warm)  # guard 7
        inverse = self._value(torch.maximum(k, floor), self.edges).pow(-self.alpha)  # v^-alpha
        total = k.sum(1, keepdim=True)
        if self.intra_weight == "category":
            weight = inverse / ((k * inverse).sum(1, keepdim=True) / total.clamp_min(1e-12))
            if self.max_weight is not None:
                weight = weight.clamp(max=self.max_weight)
                weight = weight / ((k * weight).sum(1, keepdim=True) / total.clamp_min(1e-12))
        else:
            scale = size if self.intra_weight == "printed" else size.sum().expand_as(size)  # S_c or S
            weight = scale[:, None] * inverse
        return torch.where(total > 0, weight, torch.ones_like(weight))

    @torch.no_grad()
    def _refresh_tables(self) -> None:
        """Recompute S_c, W_{c,i} and M_{m,n} from the histogram in use (in place); with
        ``warm_start="ce"`` W = 1 and M = 0 until the first epoch has been counted."""
        k = self.hist.clamp_min(0.0)
        v = self._value(k, self.edges)
        size = self._effective_size(k if self.effective_size_from == "counts" else v)
        self.effective_size.copy_(size)
        live = self.started if self.warm_start == "ce" else torch.ones_like(self.started)
        if self.intra:
            weight = self._intra_weights(k, v, size)
            self.weight_table.copy_(torch.where(live, weight, torch.ones_like(weight)))
        else:
            self.weight_table.fill_(1.0)
        if self.inter:
            s = size.clamp_min(1.0)
            ratio = (s[None, :] / s[:, None]).clamp(max=1.0)  # [m, n] = S_n / S_m, min(1, .)
            self.margin.copy_(self.gamma * torch.log(ratio) * live)  # Eq. (2)
        else:
            self.margin.zero_()

    @torch.no_grad()
    def _count_step(self, flat: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one batch: into the epoch's histogram, and with ``histogram="window"`` into the
        histogram in use, decayed per class by ``1 - b_c / n_c`` first (choice 2)."""
        ones = torch.ones_like(flat, dtype=self.hist.dtype)
        self.hist_cur.view(-1).index_add_(0, flat, ones)
        if self.histogram == "window":
            drawn = torch.zeros_like(self.class_counts).index_add_(0, targets, ones)
            self.hist.mul_((1.0 - drawn / self.class_counts.clamp_min(1.0)).clamp_min(0.0)[:, None])
            self.hist.view(-1).index_add_(0, flat, ones)
            self._refresh_tables()

    @torch.no_grad()
    def _roll(self) -> None:
        """End of an epoch: AURA's next regions from the epoch's counts (Algorithm 1); the epoch's
        counts become the histogram in use (``"epoch"``) or the window is re-binned onto the new
        regions (``"window"``); the running counts reset.

        Vectorised over classes, no host synchronisation. Classes without any example this epoch
        keep their histogram and regions, so a second call is a no-op. Under data parallelism the
        ranks' epoch counts are summed first (the window stays per rank).
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.hist_cur)
        seen = (self.hist_cur.sum(1) > 0)[:, None]
        new_edges = self.edges_cur
        if self.regions == "aura":  # d_i <- 1/log(max(v_i, floor)), normalised to sum 1
            d = 1.0 / torch.log(self._value(self.hist_cur, self.edges_cur).clamp_min(self.aura_floor))
            d = d / d.sum(1, keepdim=True)
            new_edges = torch.cat([torch.zeros_like(d[:, :1]), torch.cumsum(d, 1)], 1)
            new_edges[:, -1] = 1.0
            new_edges = torch.where(seen, new_edges, self.edges_cur)
        if self.histogram == "window":
            self.hist.copy_(rebin(self.hist, self.edges, new_edges))
            self.edges.copy_(new_edges)
        else:
            self.hist.copy_(torch.where(seen, self.hist_cur, self.hist))
            self.edges.copy_(torch.where(seen, self.edges_cur, self.edges))
        self.edges_cur.copy_(new_edges)
        self.started.logical_or_(seen.any())
        self.hist_cur.zero_()
        self._refresh_tables()

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Epoch 0: :meth:`reset` (warm start). Later epochs: roll the histograms if
        :meth:`on_epoch_end` has not already done so (the roll is idempotent)."""
        if epoch == 0:
            self.reset()
        else:
            self._roll()

    def on_epoch_end(self) -> None:
        """Close the epoch's counts; AURA re-assigns widths."""
        self._roll()

    # ------------------------------------------------------------------ per step
    def _region(self, edges: torch.Tensor, targets: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        inner = edges[:, 1:-1][targets]  # [B, N-1] boundaries of each sample's class
        return torch.searchsorted(inner, g.unsqueeze(1), right=True).squeeze(1)

    @torch.no_grad()
    def weights_of(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """R's weight ``W_{y,i}`` of each sample when these samples are every class's histogram
        (the tables are rebuilt from them: e.g. a whole training set under a trained model)."""
        targets = targets.long()
        g = self.gradient_norm(logits, targets)
        region = self._region(self.edges, targets, g)
        self.hist.zero_().view(-1).index_add_(0, targets * self.num_regions + region, torch.ones_like(g))
        self.started.fill_(True)
        self._refresh_tables()
        return self.weight_table[targets, region]

    def gradient_norm(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``g = 1 - p_y`` per sample, detached (``grad_norm``: plain or adjusted softmax)."""
        z = logits.detach().float()
        if self.grad_norm == "adjusted":
            z = z + self.margin[targets]
        p_y = torch.softmax(z, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
        return (1.0 - p_y).clamp(0.0, 1.0)

    def _normalized(self, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Choice 8: the batch's weights over their mean (``"batch"``), or each class's weights in
        the batch over that class's mean in the batch (``"class"``)."""
        if self.normalize_weights == "batch":
            return weight / weight.mean()
        if self.normalize_weights == "class":
            total = torch.zeros_like(self.class_counts).index_add_(0, targets, weight)
            drawn = torch.zeros_like(self.class_counts).index_add_(0, targets, torch.ones_like(weight))
            return weight / (total / drawn.clamp_min(1.0))[targets]
        return weight

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.long()
        z = logits.float()
        N = self.num_regions
        track = self.training and torch.is_grad_enabled()  # count in training, not under evaluation
        with torch.no_grad():
            g = self.gradient_norm(z, targets)
            if track:
                self._count_step(targets * N + self._region(self.edges_cur, targets, g), targets)
            if self.intra:
                weight = self.weight_table.view(-1)[targets * N + self._region(self.edges, targets, g)]
                weight = self._normalized(weight, targets)
        if self.inter:
            z = z + self.margin[targets]  # M_{m,m} = 0: only non-target logits move
        loss = F.cross_entropy(z, targets, reduction="none")  # Eq. (3) without W
        if self.intra:
            loss = weight * loss
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_regions={self.num_regions}, alpha={self.alpha}, "
            f"gamma={self.gamma}, intra={self.intra}, inter={self.inter}, regions={self.regions!r}, "
            f"intra_weight={self.intra_weight!r}, histogram={self.histogram!r}, warm_start={self.warm_start!r}, "
            f"normalize_weights={self.normalize_weights!r}, max_weight={self.max_weight}, "
            f"grad_norm={self.grad_norm!r}, effective_size={self.effective_size_from!r}"
        )
