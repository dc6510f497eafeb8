"""IWB: inverse weight-balancing, the stage-2 loss.

Paper (seed ``000``): Dang, Yang, Dong, Li, Shi, "Inverse Weight-Balancing for Deep Long-Tailed
Learning", AAAI 2024.

Stage 2 freezes the encoder and fine-tunes the classifier with a classification loss plus a KL
term that pulls the distribution of per-class weight norms ||W|| towards an *inverse* target P,
larger for tail classes and hard samples:

    NC_c  = log2( N / (n_c + 1) )                                  number coefficient, Eq. (3)
    g(x_i)_c = W_c . x^_i / (||W_c|| ||x^_i||)                     cosine, vector form, Eq. (5)
    HC_i  = (1 - g(x_i)) / 2          (a C-vector per sample)      hardness coefficient, Eq. (6)
    P_i   = lambda * NC (.) HC_i                                   target, Eq. (7)
    D_KL(|W|, P_i) = sum_c softmax(|W|)_c [log softmax(|W|)_c - log softmax(P_i)_c]   Eq. (8)
    loss  = sum_i [ l(f(x_i), y_i) + D_KL(|W|, P_i) ]                                   Eq. (10)

with l the CB loss (Cui et al. 2019) for "IWB+CB" (the paper's CIFAR-100-LT 54.8 row and all
ablations) or CE for plain "IWB". The paper's lambda: 0.15 on CIFAR-100-LT, 0.05 ImageNet-LT,
0.01 iNaturalist-2018 ("Implementation details").

Choices where the paper is silent (each a named option where there is a choice):

- Weight on D_KL: none; Eq. (10) adds it to the classification loss with weight 1.
- Reduction: Eq. (10) sums over samples; we average over the batch (the project's convention),
  which rescales the learning rate and keeps the CE : KL ratio of Eq. 10.
- ``base``: "cb_ce" (default; the CB softmax cross-entropy of Cui et al., the paper's CB
  definition) | "ce" (plain IWB) | "cb_softmax_bce" (the weight-balancing code's CB variant,
  binary CE on softmax probabilities, which IWB's code inherits) | any other registered loss name,
  a ``Loss`` instance, or None (the KL term alone); ``base_options`` go to its builder.
- |W| is the vector of per-class L2 norms of ``head.class_weight()`` (the effective per-class
  weights, without the bias); x^_i are the encoder features the engine passes in.
- ``detach_target`` (default False): gradients flow through the whole of Eq. (10), P included (HC
  depends on W and the features), since the paper minimises Eq. (10) over all parameters and
  calls P a "learnable target"; ``True`` treats P as a fixed target.
- Ablations: ``hc="scalar"`` (Table 3, last row) uses HC_i = (1 - cos(W_{y_i}, x^_i)) / 2 of the
  sample's own class (Eq. 4), broadcast over NC; ``nc_only=True`` (Table 3, second row) uses
  P = lambda * NC; ``divergence="mse"`` (Table 4) is mean_c (||W||_c - P_ic)^2 on the raw values,
  averaged over the batch. Table 3's first row ("naive") is the stage-1 model itself; the paper
  tunes lambda per ablation row without giving the values, and the recipes keep 0.15.
- ``log_base``: 2 (NC in log2, as printed); N = sum_c n_c of the training split.

The released code differs (named options, documented as the code's, not verified here): natural
log in NC (``log_base=math.e``, or ``"e"`` in a config) and the KL reversed and summed over the
batch, sum_i KL(softmax(P_i) || softmax(|W|)) (``kl_direction="code_reversed_sum"``, i.e.
``F.kl_div(log_softmax(|W|), softmax(P), reduction="sum")``; under data parallelism each rank sums
over its own slice, so the term is 1/world_size of the code's on one GPU). Its other differences
(whole network fine-tuned, 8x wider ResNet-32, test-set checkpoint selection, flip TTA; per the
issue-17 audit, stage 1 at lr 0.1 and stage 2 at lr 0.01 for 200 epochs where the paper's
CIFAR-100-LT settings are lr 0.01 and lr 0.005 for 10 epochs) are not loss matters. lambda = 0.01
is the paper's iNaturalist-2018 value, not a CIFAR choice of the released code; the recipe
``iwb_code`` uses it, see its header.

Recorded measurements of these options: docs/method_notes.md.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import LOSSES, Loss, build_loss, counts_tensor
from ..errors import ConfigError
from ..models.heads import as_head

# The baseline losses the ``base`` option names; importing registers them.
from . import ce as _ce  # noqa: F401
from . import class_balanced as _class_balanced  # noqa: F401

HC_MODES = ("vector", "scalar")
DIVERGENCES = ("kl", "mse")
KL_DIRECTIONS = ("paper", "code_reversed_sum")


def norm_coefficient(class_counts: Sequence[int] | torch.Tensor, log_base: float = 2.0) -> torch.Tensor:
    """NC_c = log_b( N / (n_c + 1) ), Eq. (3); float32 ``[C]`` (computed in float64)."""
    counts = counts_tensor(class_counts).double()
    if not log_base > 0 or log_base == 1:
        raise ConfigError(f"log_base must be positive and != 1, got {log_base}")
    nc = torch.log(counts.sum() / (counts + 1.0)) / math.log(log_base)
    return nc.float()


def hardness_coefficient(
    weight: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """HC = (1 - cos(W_c, x^_i)) / 2, Eqs. (5)-(6): ``[B, C]`` for ``weight [C, D]``, ``features [B, D]``.

    With ``targets`` the scalar form of Eq. (4) is returned instead: ``[B, 1]``, the sample's own
    class only. Values lie in [0, 1]; computed in float32.
    """
    w = F.normalize(weight.float(), dim=1, eps=eps)
    x = F.normalize(features.float(), dim=1, eps=eps)
    if targets is None:
        cos = x @ w.t()
    else:
        cos = (x * w.index_select(0, targets)).sum(dim=1, keepdim=True)
    return (1.0 - cos) * 0.5


def iwb_divergence(
    norms: torch.Tensor,
    target: torch.Tensor,
    divergence: str = "kl",
    kl_direction: str = "paper",
) -> torch.Tensor:
    """Per-sample divergence ``[B]`` between the weight norms ``[C]`` and the targets P ``[B, C]``.

    - ``"kl"``, ``"paper"``: Eq. (8), sum_c q_c (log q_c - log p_ic), q = softmax(|W|),
      p_i = softmax(P_i).
    - ``"kl"``, ``"code_reversed_sum"``: the released code's KL(p_i || q), multiplied by the batch
      size so that the batch mean of the per-sample values is the code's sum over the batch.
    - ``"mse"``: mean_c (|W|_c - P_ic)^2 (Table 4).
    """
    norms = norms.float()
    target = target.float()
    if divergence == "mse":
        return (norms.unsqueeze(0) - target).pow(2).mean(dim=1)
    if divergence != "kl":
        raise ConfigError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    log_q = F.log_softmax(norms, dim=0).unsqueeze(0)  # [1, C]
    log_p = F.log_softmax(target, dim=1)  # [B, C]
    if kl_direction == "paper":
        return (log_q.exp() * (log_q - log_p)).sum(dim=1)
    if kl_direction == "code_reversed_sum":
        return (log_p.exp() * (log_p - log_q)).sum(dim=1) * target.shape[0]
    raise ConfigError(f"unknown kl_direction {kl_direction!r}; valid: {', '.join(KL_DIRECTIONS)}")


@LOSSES.register("iwb")
class InverseWeightBalancingLoss(Loss):
    """IWB stage-2 loss: base loss + D_KL(|W|, lambda * NC (.) HC), Eq. (10). See module docstring.

    Call as ``loss(logits, targets, features=f)`` (``uses_features = True``).

    Args:
        class_counts: training-split images per class (N and n_c of Eq. 3).
        head: the classifier head (or a bare ``nn.Linear``); ``class_weight()`` gives W ``[C, D]``. May be bound
            later with :meth:`bind_head`. It is held by reference, not as a submodule (its
            parameters stay out of this loss's ``parameters()`` and ``state_dict()``).
        lam: lambda of Eq. (7); the paper's 0.15 (CIFAR-100-LT), 0.05 (ImageNet-LT), 0.01 (iNaturalist).
        base: classification loss l of Eq. (10): a registered loss name, a ``Loss``, or None.
        base_options: keyword options for the base loss builder (e.g. ``{"beta": 0.999}``).
        hc: "vector" (Eq. 5, default) or "scalar" (Eq. 4, own class only).
        divergence: "kl" (Eq. 8, default) or "mse" (Table 4 ablation).
        nc_only: P = lambda * NC, no hardness coefficient (Table 3 ablation).
        log_base: base of the logarithm in NC; 2 in the paper, e (``math.e`` or ``"e"``) in the
            released code.
        kl_direction: "paper" (Eq. 8, batch mean) or "code_reversed_sum".
        detach_target: stop gradients through P.
    """

    uses_features = True

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        head: nn.Module | None = None,
        lam: float = 0.15,
        base: str | Loss | None = "cb_ce",
        base_options: Mapping[str, Any] | None = None,
        hc: str = "vector",
        divergence: str = "kl",
        nc_only: bool = False,
        log_base: float | str = 2.0,
        kl_direction: str = "paper",
        detach_target: bool = False,
    ):
        super().__init__()
        if log_base == "e":  # the released code's natural log, spelled as in a config
            log_base = math.e
        if hc not in HC_MODES:
            raise ConfigError(f"unknown hc {hc!r}; valid: {', '.join(HC_MODES)}")
        if divergence not in DIVERGENCES:
            raise ConfigError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
        if kl_direction not in KL_DIRECTIONS:
            raise ConfigError(f"unknown kl_direction {kl_direction!r}; valid: {', '.join(KL_DIRECTIONS)}")
        if not lam > 0:
            raise ConfigError(f"lam must be positive, got {lam}")
        if nc_only and hc != "vector":
            raise ConfigError(f"nc_only drops HC, so hc={hc!r} would be ignored: leave hc at 'vector' or set nc_only: false")
        if divergence == "mse" and kl_direction != "paper":
            raise ConfigError(f"kl_direction={kl_direction!r} applies to divergence 'kl' only: remove it or set divergence: kl")
        if isinstance(log_base, str):
            raise ConfigError(f"log_base must be a number or 'e', got {log_base!r}")
        self.lam = float(lam)
        self.hc = hc
        self.divergence = divergence
        self.nc_only = bool(nc_only)
        self.log_base = float(log_base)
        self.kl_direction = kl_direction
        self.detach_target = bool(detach_target)
        self.register_buffer("nc", norm_coefficient(class_counts, log_base=log_base))
        if base is None or isinstance(base, Loss):
            self.base = base
        elif isinstance(base, str):
            self.base = build_loss(base, class_counts=class_counts, **dict(base_options or {}))
        else:
            raise TypeError(f"base must be a loss name, a Loss or None, got {type(base).__name__}")
        if self.base is not None and getattr(self.base, "uses_features", False):
            raise ConfigError("the IWB base loss must be a plain logits loss (uses_features = False)")
        self._head: list[nn.Module] = []
        if head is not None:
            self.bind_head(head)

    # ------------------------------------------------------------------ head
    def bind_head(self, head: nn.Module) -> "InverseWeightBalancingLoss":
        """Attach the classifier head (or bare ``nn.Linear``) whose ``class_weight()`` IWB regularises."""
        self._head = [as_head(head)]
        return self

    @property
    def head(self) -> nn.Module:
        if not self._head:
            raise RuntimeError("IWB loss has no head: pass head=model.head or call loss.bind_head(model.head)")
        return self._head[0]

    # ------------------------------------------------------------------ pieces
    def target(self, weight: torch.Tensor, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """P = lambda * NC (.) HC, ``[B, C]`` (Eq. 7, or the ablation selected)."""
        batch = features.shape[0]
        nc = self.nc.unsqueeze(0)
        if self.nc_only:
            p = (self.lam * nc).expand(batch, -1)
        else:
            hc = hardness_coefficient(weight, features, targets if self.hc == "scalar" else None)
            p = self.lam * nc * hc
        return p.detach() if self.detach_target else p

    def regulariser(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The per-sample divergence term ``[B]`` of Eq. (10)."""
        weight = self.head.class_weight().float()
        if weight.shape[0] != self.nc.shape[0]:
            raise ConfigError(
                f"head has {weight.shape[0]} classes but the loss was built for {self.nc.shape[0]}"
            )
        norms = torch.linalg.vector_norm(weight, dim=1)
        p = self.target(weight, features.float(), targets)
        return iwb_divergence(norms, p, self.divergence, self.kl_direction)

    def per_sample(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if features is None:
            raise ConfigError("IWB needs the encoder features: call loss(logits, targets, features=f)")
        reg = self.regulariser(features, targets)
        if self.base is None:
            return reg
        return self.base.per_sample(logits.float(), targets) + reg

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        features: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if features is None:
            raise ConfigError("IWB needs the encoder features: call loss(logits, targets, features=f)")
        reg = self.regulariser(features, targets)
        if sample_weight is not None:
            reg = reg * sample_weight
        total = reg.mean()
        if self.base is not None:
            # the base loss's own reduction (e.g. cb_ce normalize="weights") is kept
            total = total + self.base(logits.float(), targets, sample_weight=sample_weight)
        return total

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        if self.base is not None:
            self.base.on_epoch_start(epoch, total_epochs)

    def on_epoch_end(self) -> None:
        if self.base is not None:
            self.base.on_epoch_end()

    def extra_repr(self) -> str:
        return (
            f"lam={self.lam}, hc={self.hc!r}, divergence={self.divergence!r}, nc_only={self.nc_only}, "
            f"log_base={self.log_base:g}, kl_direction={self.kl_direction!r}, detach_target={self.detach_target}"
        )


__all__ = [
    "InverseWeightBalancingLoss",
    "norm_coefficient",
    "hardness_coefficient",
    "iwb_divergence",
]
