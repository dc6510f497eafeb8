"""Long-tailed losses, each an ``nn.Module`` registered by name in ``LOSSES``.

Importing this package registers every family; build one with ``build_loss(name, class_counts=...)``.
"""
from . import (  # noqa: F401  (imported for registration)
    bfs,
    ce,
    class_balanced,
    distillation,
    equalization,
    focal,
    ghm,
    ghm_cwap,
    gradual,
    iwb,
    label_aware_smoothing,
    ldam,
    logit_adjust,
    reweighting,
    seesaw,
)
from .base import LOSSES, Loss, build_loss, counts_tensor
from .bfs import BalancedFocalSoftmaxLoss, bwlm_head_classes, review_set_indices
from .ghm_cwap import GHMCWAPLoss, ghm_cwap_variant
from .gradual import GradualLogitAdjustedLoss, gradual_alpha
from .iwb import InverseWeightBalancingLoss, hardness_coefficient, iwb_divergence, norm_coefficient

__all__ = [
    "LOSSES", "Loss", "build_loss", "counts_tensor",
    "BalancedFocalSoftmaxLoss", "bwlm_head_classes", "review_set_indices",
    "GHMCWAPLoss", "ghm_cwap_variant",
    "GradualLogitAdjustedLoss", "gradual_alpha",
    "InverseWeightBalancingLoss", "hardness_coefficient", "iwb_divergence", "norm_coefficient",
]
