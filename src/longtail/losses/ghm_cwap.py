r"""GHM-CWAP: gradient harmonized mechanism with category-wise adaptive precision.

Zhang, Lin, Zhang and Xu, "Solving the long-tailed problem via intra- and inter-category
balance" (Shanghai Jiao Tong University; seed paper ``002_351d9e06627295d3``).

The method in the paper's notation
----------------------------------
For a sample of class ``y`` the gradient norm is ``g = 1 - p_y`` (softmax probability of the
true class). Every class ``c`` keeps its own histogram ``H_c`` of ``g`` over ``N`` unit regions
(default ``N = 30``); ``v_{c,i}`` is the value of region ``i`` and ``d_{c,i}`` its width.

* Effective size (Sec. 3.2):  ``S_c = sum_i v_{c,i}^alpha``  (``alpha = 0.9``).
* Intra-category balance, Eq. (1):  ``W_{c,i} = 1 / (v_{c,i}^alpha / S_c) = S_c / v_{c,i}^alpha``
  as printed; the default here divides by a size common to all classes instead (decision 2a).
* Inter-category balance, Eq. (2):  ``M_{m,n} = gamma * log(min(1, S_n / S_m))`` (``gamma = 0.8``),
  added to logit ``z_n`` for a sample of class ``m``.  ``M_{m,m} = 0``, so the margin falls on the
  non-target logits only.  For a *head-class sample* ``m`` and a *tail-class logit* ``n``
  (``S_n < S_m``) the margin is negative, which reduces the suppression of tail logits by head
  samples; for a tail-class sample and a head-class logit it is zero ("the influence of tail
  classes on head classes stays the same").
* Loss, Eq. (3):  ``L = -W_{m,i} * log( e^{z_m} / sum_n e^{z_n + M_{m,n}} )``.
* Regions (Sec. 3.3): URA = ``N`` equal widths on ``[0, 1]``; AURA = Algorithm 1: every
  example adds ``1 / (N * d_i)`` to the value of its region (so ``v`` is a density, equal to the
  plain count for equal widths ``d_i = 1/N``); after each epoch ``d_i <- 1 / log(v_i)``, the
  widths are normalised to sum to 1 and the values are reset.  The histograms used for ``W`` and
  ``S`` are those counted during the *previous* epoch.

The paper's defaults are the defaults here (``N = 30``, ``alpha = 0.9``, ``gamma = 0.8``,
intra + inter balance, AURA).  The rows of the ablation Table 3 are named options, see
:func:`ghm_cwap_variant` (which also notes that the caption's R/A labels conflict with the
paper's text and numbers).

Decisions where the paper is ambiguous
---------------------------------------
1. **Gradient norm.** ``g = 1 - softmax(z)_y`` of the model's plain logits, detached
   (``grad_norm="plain"``).  The paper says only "calculate the gradient norm g"; this follows
   GHM's difficulty measure and keeps the histogram independent of the inter-category switch.
   ``grad_norm="adjusted"`` uses the margin-adjusted softmax of Eq. (3) instead (the exact norm
   of the loss's gradient on ``z_y`` before the weight ``W``).
2. **Counts for S, densities for W** (``effective_size``). Sec. 3.2 defines ``v_{c,i}`` as "the
   number of examples" in region ``i``; Sec. 3.3 re-uses the symbol for Algorithm 1's value, which
   adds ``1/(N d_{c,i})`` per example (a density; the count under URA, where ``d = 1/N``). We read
   the effective *sample size* of Sec. 3.2 as built from counts, ``S_c = sum_i k_{c,i}^alpha`` with
   ``k_{c,i}`` the examples counted in region ``i`` (``effective_size="counts"``, default; with
   ``N`` regions ``n_c^alpha <= S_c <= N^(1-alpha) n_c^alpha``, so Eq. 2 orders two classes by size
   whenever their counts differ by more than ``N^((1-alpha)/alpha)``, 1.46 for the paper's N, alpha),
   and the ``v^alpha`` in the denominator of Eq. (1) as Algorithm 1's density (GHM's weight is
   the inverse of a gradient *density*; a count per region would make narrow AURA regions count
   as sparse). ``effective_size="values"`` builds S_c from the densities too (the literal
   Sec. 3.3 reading, and this module's behaviour before issue 17): under AURA a class squeezed
   into one narrow region gets an S_c far above its size. On 20 Newsgroups-LT after 100 epochs
   with ``intra_weight="printed"`` (seed 0) the 67-post class had S = 206 from densities, above
   the 178-post class's 182 (10 of the 190 class pairs ordered against their counts), and
   49 against 148 from counts (no pair out of order); with the default ``intra_weight`` both
   orders match the counts. Measured effect on top-1 (below, 2a): 62.46 ± 0.06 (counts) against
   62.09 ± 0.47 (values) with ``intra_weight="global"``; 37.75 ± 2.03 against 39.64 ± 1.62 with
   ``"printed"``.
2a. **Intra weight** (``intra_weight``). Eq. (1) as printed (``"printed"``) is ``W = S_c /
   v^alpha``. Inside a class this is GHM's inverse density, but the factor S_c grows with the
   class: a class spread over all N regions gets ``W ~ N`` per example while a class whose examples
   share one region gets ``W = 1`` (its S_c equals that region's ``v^alpha``), so the total weight
   of class c is ``S_c sum_i v_{c,i}^(1-alpha)`` (URA), larger for the head than its size already makes
   it. On fixed sentence features the tail posts are never fitted and sit in one or two regions:
   on 20 Newsgroups-LT after 100 epochs with ``"printed"`` (seed 0, weights of the training posts
   under the final tables) the largest weight is 717 (a class-0 post) and each of the ten classes
   of 67 posts or fewer gets 0.007-0.17 % of the total weight (0.2-2.4 % of the posts); with
   ``"global"`` each of the five few-shot classes gets 0.96-2.35 %. That couples difficulty and sample size, the
   opposite of the stated aim ("to decouple the difficulty and sample size", Sec. 1; "harmonizes
   the easy and hard of examples in each category separately", Sec. 3.2). ``"global"`` (default)
   is GHM's own weight ``beta_i = N_total / GD(g_i)`` (Li et al. 2019) with the category's density
   ``GD_c``: ``W_{c,i} = S / v_{c,i}^alpha`` with one normaliser ``S = sum_c S_c`` for all classes
   (any constant: the default batch normalisation divides it out), i.e. S_c of Eq. (1) read as the
   size normaliser GHM divides by, not as a per-class factor. Each class's histogram is then
   harmonised separately (no head-class region can swamp a tail class's, Fig. 2a) and no class is
   weighted up for being large. ``normalize_weights="class"`` (decision 8) is a third reading:
   every class's mean weight is 1, so W re-weights only inside a class (S_c cancels, so it does not
   depend on ``intra_weight``). Measured on 20 Newsgroups-LT (top-1 %, mean ± sample std over
   seeds 0 1 2, CPU, ``longtail train configs/newsgroups_lt/ROW.yaml seed=S engine.device=cpu``
   for S in 0 1 2, commit 4a10b4f + this change): ``"global"`` (row ``ghm_cwap``) 62.46 ± 0.06
   (few-shot 36.16 ± 0.61); ``"printed"`` (row ``ghm_cwap_printed``) 37.75 ± 2.03 (few-shot 0.00);
   per-class normalisation (row ``ghm_cwap_class_norm``) 52.95 ± 0.33 (few-shot 7.71 ± 0.56);
   CE 47.75 ± 0.02 and Seesaw 54.78 ± 0.07 (rows ``ce``, ``seesaw``, at 5f35e0d). The paper's
   Table 1-3 numbers cannot tell the readings apart, and the paper links no code.
3. **Per-class regions.** The paper writes ``d_{c,i}`` (one set of widths per class), so the
   region boundaries are a ``[C, N+1]`` buffer, looked up on device with ``torch.searchsorted``
   (right-closed: ``g`` exactly on a boundary goes to the upper region, ``g = 1`` to the last one).
4. **Previous epoch, two boundary sets.** Counts of the current epoch go to ``hist_cur`` with the
   current boundaries; ``W`` and ``S`` use ``hist_prev`` looked up with the boundaries *it was
   counted with* (``edges_prev``), i.e. the previous epoch's piecewise-constant density estimate
   evaluated at ``g``.  At the end of the epoch ``hist_cur`` becomes ``hist_prev`` and, for AURA,
   new current boundaries are derived from it.  A class that received no example in an epoch
   keeps its previous histogram and boundaries (otherwise ``S_c = 0`` would make the margins
   ``-inf``); this also makes the epoch roll idempotent, so calling both ``on_epoch_end()`` and
   ``on_epoch_start(epoch > 0)`` rolls once.
5. **First epoch (warm start).** Algorithm 1 starts from ``v = 0``, which leaves ``S_c = 0`` and
   Eqs. (1)-(2) undefined during the first epoch.  ``warm_start="uniform"`` (default) assumes the
   least-informative histogram consistent with the known class size: ``n_c / N`` examples in each
   of the ``N`` equal regions.  Then ``S_c = N^{1-alpha} n_c^alpha``; the printed weights are
   ``W_{c,i} = N`` for every sample (no difficulty information yet; 1 after normalisation), the
   default ``"global"`` ones ``W_c = S (N / n_c)^alpha``, the weights ``prop. n_c^-alpha`` that the
   later epochs give a class whose examples share one region; the first-epoch margins are
   ``gamma * alpha * log(min(1, n_n / n_m))`` - the inter-category balance from the class counts,
   identical to what a single-region histogram of the class would give.  ``n_c`` are the
   ``class_counts`` passed in (the training split), whatever sampler is used.
   ``warm_start="ce"`` uses ``W = 1`` and ``M = 0`` (plain cross-entropy) during the first epoch.
6. **AURA guard.** ``d_i <- 1/log(v_i)`` is negative, infinite or undefined for ``v_i <= 1``.
   We use ``d_i <- 1 / log(max(v_i, aura_floor))`` with ``aura_floor = e``: identical to the paper
   for ``v_i >= e``, every sparser region (including empty ones) gets the largest unnormalised
   width 1, and the rule stays monotone (denser -> narrower) and finite.  Algorithm 1 re-lays the
   regions left to right with the new widths, region index by region index, as printed.
7. **Empty region guard.** A sample can fall into a region that was empty in the previous epoch;
   the value of an empty region is taken as one example's worth, ``1/(N d_{c,i})`` (1 for URA),
   the least a region holding this sample would have; so ``W <= S_c (N d_{c,i})^alpha`` (``S`` for ``"global"``).
   (Non-empty regions are used as they are, including the fractional warm-start values.)
   A class whose histogram is entirely empty (possible only with ``warm_start="ce"``) gets
   ``W = 1``; in the margins ``S`` is clamped to at least 1.
8. **Weight normalisation.** Eq. (1)'s ``W`` grows with the number of occupied regions (and, as
   printed, with S_c), which drifts the loss scale.  ``normalize_weights=True`` (alias ``"batch"``)
   divides the batch's ``W`` by its batch mean (detached), so the mean sample weight in every batch
   is 1 and the relative weights of Eq. (1) inside the batch are unchanged (graph-safe: a mean, no
   branch). ``"class"`` instead divides each class's ``W`` row, once per epoch, by its expected
   value under that class's previous-epoch histogram (mean weight 1 per class, so ``W`` then only
   re-weights inside a class; see 2a).  ``False``/``"none"`` uses the weights of Eq. (1) unscaled.
9. **Counting.** Histograms count every example passed to :meth:`per_sample` while the module is
   in training mode and autograd is enabled (so evaluation under ``torch.no_grad()`` or after
   ``.eval()`` does not pollute them), with repeats counted as the sampler draws them (Algorithm 1:
   "for each example").  A mixing scheme that calls ``per_sample`` once per target counts a mixed
   example once per call.

CUDA-graph safety: :meth:`per_sample` only gathers from per-epoch tables (``weight_table``
``[C, N]``, ``margin`` ``[C, C]``), runs ``searchsorted`` on device and ``index_add_`` into the
flat ``C*N`` current histogram; no host synchronisation and no branching on tensor values.
The epoch roll (:meth:`on_epoch_end`) is vectorised torch code with in-place ``copy_`` updates
and no host synchronisation either.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import ConfigError
from .base import LOSSES, Loss, counts_tensor

_REGIONS = ("aura", "ura")
_WARM_STARTS = ("uniform", "ce")
_NORMALIZE = {True: "batch", False: "none", "batch": "batch", "class": "class", "none": "none"}
_GRAD_NORMS = ("plain", "adjusted")
_INTRA_WEIGHTS = ("global", "printed")
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

        raise KeyError(
            f"unknown GHM-CWAP variant {name!r}{closest(key, _VARIANTS)}; "
            f"valid names: {', '.join(_VARIANTS)}"
        )
    return dict(_VARIANTS[key])


@LOSSES.register("ghm_cwap")
class GHMCWAPLoss(Loss):
    """GHM-CWAP loss (intra-category GHM weights + inter-category margins), Eqs. (1)-(3).

    Args:
        class_counts: training examples per class (used by the first-epoch warm start).
        num_regions: ``N`` unit regions per class histogram (paper: 30).
        alpha: effectiveness factor ``alpha`` in ``S_c = sum_i v_{c,i}^alpha`` (paper: 0.9).
        gamma: margin scale ``gamma`` in Eq. (2) (paper: 0.8).
        intra: apply the intra-category weights ``W`` of Eq. (1) ("R" in Table 3).
        inter: apply the inter-category margins ``M`` of Eq. (2) ("A" in Table 3).
        regions: ``"aura"`` (Algorithm 1, paper default) or ``"ura"`` (equal widths).
        warm_start: first-epoch histogram, ``"uniform"`` (``n_c/N`` per region) or ``"ce"``.
        normalize_weights: ``True``/``"batch"``, ``"class"`` or ``False``/``"none"``
            (see the module docstring, decision 8).
        grad_norm: ``"plain"`` (``1 - softmax(z)_y``) or ``"adjusted"`` (margin-adjusted softmax).
        aura_floor: the guard of ``d <- 1/log(max(v, aura_floor))``; must be > 1 (default ``e``).
        intra_weight: ``"global"`` (``W = S / v^alpha``, ``S = sum_c S_c``; default) or ``"printed"``
            (``W = S_c / v^alpha``, Eq. 1 as printed); see the module docstring, decision 2a.
        effective_size: ``"counts"`` (S_c from the examples counted per region; default) or
            ``"values"`` (from Algorithm 1's densities); decision 2.

    See the module docstring for the equations and every decision on ambiguities.
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
        warm_start: str = "uniform",
        normalize_weights: bool | str = True,
        grad_norm: str = "plain",
        aura_floor: float = math.e,
        intra_weight: str = "global",
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
        if regions not in _REGIONS:
            raise ConfigError(f"regions must be one of {_REGIONS}, got {regions!r}")
        if warm_start not in _WARM_STARTS:
            raise ConfigError(f"warm_start must be one of {_WARM_STARTS}, got {warm_start!r}")
        if not isinstance(normalize_weights, (bool, str)) or normalize_weights not in _NORMALIZE:
            raise ConfigError(
                "normalize_weights must be True/'batch', 'class' or False/'none', "
                f"got {normalize_weights!r}"
            )
        if grad_norm not in _GRAD_NORMS:
            raise ConfigError(f"grad_norm must be one of {_GRAD_NORMS}, got {grad_norm!r}")
        if not aura_floor > 1:
            raise ConfigError(f"aura_floor must be > 1 so that log(floor) > 0, got {aura_floor!r}")
        if intra_weight not in _INTRA_WEIGHTS:
            raise ConfigError(
                f"intra_weight must be 'global' (W = S / v^alpha, S summed over the classes: the default) or "
                f"'printed' (W = S_c / v^alpha, Eq. 1 as printed), got {intra_weight!r}"
            )
        if effective_size not in _EFFECTIVE_SIZES:
            raise ConfigError(
                f"effective_size must be 'counts' (S_c from the examples counted per region: the default) or "
                f"'values' (from Algorithm 1's density values), got {effective_size!r}"
            )

        self.num_classes = int(counts.numel())
        self.num_regions = int(num_regions)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.intra = bool(intra)
        self.inter = bool(inter)
        self.regions = regions
        self.warm_start = warm_start
        self.normalize_weights = _NORMALIZE[normalize_weights]
        self.grad_norm = grad_norm
        self.aura_floor = float(aura_floor)
        self.intra_weight = intra_weight
        self.effective_size_from = effective_size

        C, N = self.num_classes, self.num_regions
        self.register_buffer("class_counts", counts)
        # v of Algorithm 1, previous epoch (used) and current epoch (accumulating).
        self.register_buffer("hist_prev", torch.zeros(C, N))
        self.register_buffer("hist_cur", torch.zeros(C, N))
        # region boundaries [C, N+1] (0 ... 1) that hist_prev / hist_cur were counted with
        self.register_buffer("edges_prev", torch.zeros(C, N + 1))
        self.register_buffer("edges_cur", torch.zeros(C, N + 1))
        # per-epoch tables read by per_sample
        self.register_buffer("increment", torch.ones(C, N))  # 1 / (N d_{c,i}), current edges
        self.register_buffer("effective_size", torch.zeros(C))  # S_c (previous epoch)
        self.register_buffer("weight_table", torch.ones(C, N))  # W_{c,i} (normalised if "class")
        self.register_buffer("margin", torch.zeros(C, C))  # M_{m,n}, row m = sample's class
        self.reset()

    # ------------------------------------------------------------------ per-epoch state
    def _uniform_edges(self) -> torch.Tensor:
        edges = torch.linspace(0.0, 1.0, self.num_regions + 1, device=self.hist_prev.device)
        return edges.expand(self.num_classes, -1)

    @staticmethod
    def _widths(edges: torch.Tensor) -> torch.Tensor:
        return edges[:, 1:] - edges[:, :-1]

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the state before the first epoch (equal widths, warm-start histogram)."""
        N = self.num_regions
        self.edges_prev.copy_(self._uniform_edges())
        self.edges_cur.copy_(self._uniform_edges())
        self.hist_cur.zero_()
        if self.warm_start == "uniform":
            self.hist_prev.copy_((self.class_counts / N)[:, None].expand(-1, N))
        else:
            self.hist_prev.zero_()
        self._refresh_tables()
        if self.warm_start == "ce":
            self.weight_table.fill_(1.0)
            self.margin.zero_()

    def _effective_size(self, v: torch.Tensor) -> torch.Tensor:
        """``S_c = sum_i v_{c,i}^alpha`` (Sec. 3.2) of a ``[C, N]`` histogram; ``0**0`` counts as 0."""
        if self.alpha == 0:
            return (v > 0).sum(1).to(v.dtype)
        return v.pow(self.alpha).sum(1)

    @torch.no_grad()
    def _refresh_tables(self) -> None:
        """Recompute 1/(N d), S_c, W_{c,i} and M_{m,n} from the buffers (in place)."""
        N = self.num_regions
        self.increment.copy_(1.0 / (N * self._widths(self.edges_cur)))
        v = self.hist_prev.clamp_min(0.0)
        one_example = 1.0 / (N * self._widths(self.edges_prev))  # value of one example
        examples = v / one_example  # examples counted per region
        size = self._effective_size(examples if self.effective_size_from == "counts" else v)  # S_c
        self.effective_size.copy_(size)
        has_hist = size > 0

        if self.intra:
            filled = torch.where(v > 0, v, one_example)  # an empty region: one example's worth
            scale = size if self.intra_weight == "printed" else size.sum().expand_as(size)  # S_c or S
            weight = scale[:, None] / filled.pow(self.alpha)  # Eq. (1)
            if self.normalize_weights == "class":
                expected = (examples * weight).sum(1) / examples.sum(1).clamp_min(1e-12)
                expected = torch.where(has_hist, expected, torch.ones_like(expected))
                weight = weight / expected[:, None]
            weight = torch.where(has_hist[:, None], weight, torch.ones_like(weight))
            self.weight_table.copy_(weight)
        else:
            self.weight_table.fill_(1.0)

        if self.inter:
            s = size.clamp_min(1.0)
            ratio = (s[None, :] / s[:, None]).clamp(max=1.0)  # [m, n] = S_n / S_m, min(1, .)
            self.margin.copy_(self.gamma * torch.log(ratio))  # Eq. (2)
        else:
            self.margin.zero_()

    @torch.no_grad()
    def _roll(self) -> None:
        """End of an epoch: hist_cur -> hist_prev, AURA widths (Algorithm 1), reset hist_cur.

        Vectorised over classes, no host synchronisation. Classes without any example this
        epoch keep their previous histogram and boundaries, so a second call is a no-op. Under
        data parallelism the ranks' counts are summed first, so every rank rolls the histogram
        of the whole epoch (AURA's widths depend on the absolute counts).
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.hist_cur)
        seen = (self.hist_cur.sum(1) > 0)[:, None]
        new_prev_edges = torch.where(seen, self.edges_cur, self.edges_prev)
        if self.regions == "aura":
            # d_i <- 1/log(v_i), guarded: 1/log(max(v_i, floor)); then normalised to sum 1.
            d = 1.0 / torch.log(self.hist_cur.clamp_min(self.aura_floor))
            d = d / d.sum(1, keepdim=True)
            edges = torch.cat([torch.zeros_like(d[:, :1]), torch.cumsum(d, 1)], 1)
            edges[:, -1] = 1.0
            self.edges_cur.copy_(torch.where(seen, edges, self.edges_cur))
        self.hist_prev.copy_(torch.where(seen, self.hist_cur, self.hist_prev))
        self.edges_prev.copy_(new_prev_edges)
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
        """Swap the histogram counted this epoch in as "previous"; AURA re-assigns widths."""
        self._roll()

    # ------------------------------------------------------------------ per step
    def _region(self, edges: torch.Tensor, targets: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        inner = edges[:, 1:-1][targets]  # [B, N-1] boundaries of each sample's class
        return torch.searchsorted(inner, g.unsqueeze(1), right=True).squeeze(1)

    def gradient_norm(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``g = 1 - p_y`` per sample, detached (``grad_norm``: plain or adjusted softmax)."""
        z = logits.detach().float()
        if self.grad_norm == "adjusted":
            z = z + self.margin[targets]
        p_y = torch.softmax(z, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
        return (1.0 - p_y).clamp(0.0, 1.0)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.long()
        z = logits.float()
        track = self.training and torch.is_grad_enabled()
        N = self.num_regions
        with torch.no_grad():
            g = self.gradient_norm(z, targets)
            if track:  # Algorithm 1: v_i <- v_i + 1/(N d_i), flat index class*N + region
                flat = targets * N + self._region(self.edges_cur, targets, g)
                self.hist_cur.view(-1).index_add_(0, flat, self.increment.view(-1)[flat])
            if self.intra:
                flat_prev = targets * N + self._region(self.edges_prev, targets, g)
                weight = self.weight_table.view(-1)[flat_prev]
                if self.normalize_weights == "batch":
                    weight = weight / weight.mean()
        if self.inter:
            z = z + self.margin[targets]  # M_{m,m} = 0: only non-target logits move
        loss = F.cross_entropy(z, targets, reduction="none")  # Eq. (3) without W
        if self.intra:
            loss = weight * loss
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_regions={self.num_regions}, alpha={self.alpha}, "
            f"gamma={self.gamma}, intra={self.intra}, inter={self.inter}, "
            f"regions={self.regions!r}, "
            f"warm_start={self.warm_start!r}, normalize_weights={self.normalize_weights!r}, "
            f"grad_norm={self.grad_norm!r}, intra_weight={self.intra_weight!r}, "
            f"effective_size={self.effective_size_from!r}"
        )
