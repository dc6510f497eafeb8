"""Long-tailed losses, each an ``nn.Module`` registered by name in ``LOSSES``.

Importing this package registers every family (each module below registers its losses); build one with ``build_loss(name, class_counts=...)``.
"""
from .base import LOSSES, Loss, build_loss, counts_tensor
from .bfs import BalancedFocalSoftmaxLoss, bwlm_head_classes, review_set_indices
from .ce import CrossEntropyLoss
from .class_balanced import (
    CBCrossEntropyLoss,
    CBFocalLoss,
    CBSigmoidFocalLoss,
    CBSoftmaxBCELoss,
    class_balanced_weights,
)
from .distillation import DistillationLoss
from .equalization import SoftmaxEqualizationLoss
from .focal import FocalLoss, SigmoidFocalLoss
from .ghm import GHMCLoss
from .ghm_cwap import GHMCWAPLoss, ghm_cwap_variant
from .gradual import GradualLogitAdjustedLoss, gradual_alpha
from .iwb import InverseWeightBalancingLoss, hardness_coefficient, iwb_divergence, norm_coefficient
from .label_aware_smoothing import LabelAwareSmoothingLoss, label_aware_smoothing_factors
from .ldam import LDAMLoss, ldam_margins
from .logit_adjust import BalancedSoftmaxLoss, LogitAdjustedLoss, log_prior, posthoc_logit_adjustment
from .reweighting import DeferredReweighting
from .seesaw import SeesawLoss

__all__ = [
    "LOSSES", "Loss", "build_loss", "counts_tensor",
    # baselines
    "CrossEntropyLoss", "FocalLoss", "SigmoidFocalLoss",
    "CBCrossEntropyLoss", "CBFocalLoss", "CBSigmoidFocalLoss", "CBSoftmaxBCELoss", "class_balanced_weights",
    "LDAMLoss", "ldam_margins", "DeferredReweighting",
    "LogitAdjustedLoss", "BalancedSoftmaxLoss", "log_prior", "posthoc_logit_adjustment",
    "SeesawLoss", "SoftmaxEqualizationLoss", "GHMCLoss",
    "LabelAwareSmoothingLoss", "label_aware_smoothing_factors", "DistillationLoss",
    # the seed methods
    "BalancedFocalSoftmaxLoss", "bwlm_head_classes", "review_set_indices",
    "GHMCWAPLoss", "ghm_cwap_variant",
    "GradualLogitAdjustedLoss", "gradual_alpha",
    "InverseWeightBalancingLoss", "hardness_coefficient", "iwb_divergence", "norm_coefficient",
]
