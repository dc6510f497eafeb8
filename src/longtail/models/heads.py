"""Classifier heads: features [B, D] -> logits [B, C].

Every head has ``in_dim``, ``num_classes`` and ``class_weight() -> Tensor[C, D]``, the effective
per-class weight vectors (norm plots, MaxNorm, IWB). ``HEADS`` maps names to the classes;
``Head.build(in_dim, num_classes, **options)`` builds any of them from sizes alone (what
``build_model`` and checkpoint loading use). In stage 2, wrap a trained head directly:
``model.replace_head(LWSHead(model.head))``; the stage-2 wrappers (LWS, LWS-Plus, tau-norm) also
take a bare ``nn.Linear`` (a torchvision or timm classifier: ``net.fc = LWSHead(net.fc)``) and
share its Parameters. ``as_head`` is the one place that turns such a classifier into a head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import ConfigError, DataError
from longtail.registry import Registry

HEADS = Registry("head")


class Head(nn.Module):
    """Base class of the heads: ``forward(features) -> logits`` and ``class_weight()``."""

    in_dim: int
    num_classes: int

    @classmethod
    def build(cls, in_dim: int, num_classes: int, **options) -> "Head":
        """Build the head from the feature size and class count (same for every head)."""
        return cls(in_dim, num_classes, **options)

    def class_weight(self) -> torch.Tensor:
        """Effective per-class weight vectors, Tensor[C, D]."""
        raise NotImplementedError


@HEADS.register("linear")
class LinearHead(Head):
    """z = W x + b, W ∈ R^{C×D} (``.fc``, an ``nn.Linear``).

    W is Kaiming-normal (fan-in, gain √2) and b keeps nn.Linear's uniform init, as in the
    ResNet-32 code of Cao et al. (2019) / Idelbayev. ``bias_init="prior"`` starts every bias at
    b = −log(C − 1), so that each one-vs-all sigmoid starts at the prior 1/C: Cui et al.'s (2019)
    initialisation for their sigmoid and focal losses (Lin et al. 2017, Sec. 3.3, with π = 1/C).
    ``class_weight()`` returns ``fc.weight`` itself, so that projections such as MaxNorm can act on
    it in place.
    """

    def __init__(self, in_dim: int, num_classes: int, bias: bool = True, bias_init: str = "uniform"):
        super().__init__()
        self.in_dim, self.num_classes = in_dim, num_classes
        self.fc = nn.Linear(in_dim, num_classes, bias=bias)
        nn.init.kaiming_normal_(self.fc.weight)
        if bias_init == "prior" and bias:
            nn.init.constant_(self.fc.bias, -torch.log(torch.tensor(max(num_classes - 1, 1), dtype=torch.float64)).item())
        elif bias_init not in ("uniform", "prior"):
            raise ConfigError(f"unknown bias_init {bias_init!r}; valid: uniform (nn.Linear's), prior (-log(C-1))")

    @classmethod
    def wrap(cls, linear: nn.Linear) -> "LinearHead":
        """A LinearHead whose ``fc`` is ``linear`` itself: the same Parameters, no copy, no init."""
        head = cls.__new__(cls)
        Head.__init__(head)
        head.in_dim, head.num_classes, head.fc = linear.in_features, linear.out_features, linear
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def class_weight(self) -> torch.Tensor:
        return self.fc.weight


def as_head(module: nn.Module) -> Head:
    """``module`` as a head: anything with ``class_weight()`` as it is, a bare ``nn.Linear``
    (e.g. a torchvision or timm classifier) as ``LinearHead.wrap(module)``, sharing its Parameters."""
    if callable(getattr(module, "class_weight", None)):
        return module
    if isinstance(module, nn.Linear):
        return LinearHead.wrap(module)
    raise ConfigError(f"expected a classifier head (a longtail Head or an nn.Linear), got "
                      f"{type(module).__name__}; pass the model's final nn.Linear or a Head subclass")


@HEADS.register("cosine")
class CosineHead(Head):
    """z_c = s · cos(x, w_c) = s · (x / ‖x‖) · (w_c / ‖w_c‖): LDAM's ``NormedLinear``
    (Cao et al. 2019).

    W is stored C×D (LDAM stores its transpose, D×C); the init is LDAM's: uniform(−1, 1), each
    class vector rescaled to unit norm. ``scale`` defaults to 1 because the LDAM loss applies its
    own s = 30. ``class_weight()`` = s · w_c / ‖w_c‖.
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 1.0):
        super().__init__()
        self.in_dim, self.num_classes, self.scale = in_dim, num_classes, scale
        weight = torch.empty(num_classes, in_dim).uniform_(-1, 1)
        self.weight = nn.Parameter(F.normalize(weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), self.class_weight())

    def class_weight(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1) * self.scale


class FrozenBaseHead(Head):
    """A head computed from a frozen ``LinearHead`` (Kang et al. 2020's classifier re-balancing).

    ``base`` may also be a bare ``nn.Linear``: ``.base`` is then ``LinearHead.wrap(base)``, whose
    ``fc`` is that very module (same Parameters). The constructor sets ``requires_grad=train_base``
    on the base's parameters, in place: ``train_base=True`` trains the linear classifier together
    with the wrapper's own parameters (MiSLAS's stage 2 re-trains the classifier and an LWS scale
    jointly).
    """

    def __init__(self, base: LinearHead | nn.Linear, train_base: bool = False):
        super().__init__()
        if not isinstance(base, (LinearHead, nn.Linear)):
            raise ConfigError(f"{type(self).__name__} wraps a linear classifier (LinearHead or nn.Linear), "
                              f"got {type(base).__name__}; train stage 1 with head='linear'")
        self.base = as_head(base).requires_grad_(train_base)
        self.in_dim, self.num_classes = self.base.in_dim, self.base.num_classes

    @classmethod
    def build(cls, in_dim: int, num_classes: int, bias: bool = True, **options) -> "FrozenBaseHead":
        """Wrap a new ``LinearHead(in_dim, num_classes, bias)`` (e.g. to load a checkpoint into)."""
        return cls(LinearHead(in_dim, num_classes, bias), **options)


@HEADS.register("lws")
class LWSHead(FrozenBaseHead):
    """Learnable weight scaling (Kang et al. 2020): z_c = f_c · (w_c · x + b_c).

    f (``.scale``, initialised to 1) trains; the linear base is frozen unless ``train_base``.
    ``class_weight()`` = f_c · w_c.
    """

    def __init__(self, base: LinearHead | nn.Linear, train_base: bool = False):
        super().__init__(base, train_base)
        self.scale = nn.Parameter(torch.ones(self.num_classes, device=self.base.fc.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale

    def class_weight(self) -> torch.Tensor:
        return self.base.class_weight() * self.scale[:, None]


@HEADS.register("lws_plus")
class LWSPlusHead(LWSHead):
    """LWS-Plus (LADC, Eq. 14): z_c = f_c · Φ_c(x) + g_c.

    Our reading: Φ_c(x) = w_c · x + b_c is the frozen stage-1 logit (the paper calls it "the logit
    score of the class"), f_c the LWS scale (init 1) and g_c an added learnable per-class bias
    (``.logit_bias``, init 0, so training starts from the stage-1 classifier).
    """

    def __init__(self, base: LinearHead | nn.Linear, train_base: bool = False):
        super().__init__(base, train_base)
        self.logit_bias = nn.Parameter(torch.zeros_like(self.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.logit_bias, self.base(x), self.scale)


@HEADS.register("tau_norm")
class TauNormHead(FrozenBaseHead):
    """τ-normalised classifier (Kang et al. 2020): z_c = x · w_c / ‖w_c‖^τ.

    The base bias is dropped, as in Kang et al.'s τ-norm code (``pnorm`` on the weights, logits
    from the weights alone). τ = 1 normalises fully, τ = 0 is the raw weights. τ is a buffer:
    ``set_tau`` changes it in place, so a validation search needs no rebuild and CUDA graphs
    stay valid.
    """

    def __init__(self, base: LinearHead | nn.Linear, tau: float = 1.0):
        super().__init__(base)
        self.register_buffer("tau", torch.tensor(float(tau), device=self.base.fc.weight.device))

    def set_tau(self, tau: float) -> None:
        """Set τ in place."""
        self.tau.fill_(tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.class_weight())

    def class_weight(self) -> torch.Tensor:
        weight = self.base.class_weight()
        return weight / torch.linalg.vector_norm(weight, dim=1, keepdim=True).pow(self.tau)


@HEADS.register("ncm")
class NCMHead(Head):
    """Nearest class mean (Kang et al. 2020, Sec. 4): z_c = cos(x, μ_c) (``metric="cosine"``) or
    z_c = −‖x̂ − μ̂_c‖₂ (``metric="euclidean"``, "the Euclidean distance computed on L2 normalized
    mean features": x̂ = x/‖x‖, μ̂_c = μ_c/‖μ_c‖), μ_c the mean training feature of class c.

    The means are a buffer (saved in checkpoints). ``class_weight()`` returns the means.
    """

    METRICS = ("cosine", "euclidean")

    def __init__(self, class_means: torch.Tensor, metric: str = "cosine"):
        super().__init__()
        if metric not in self.METRICS:
            raise ConfigError(f"unknown NCM metric {metric!r}; use one of {self.METRICS}")
        self.num_classes, self.in_dim = class_means.shape
        self.metric = metric
        self.register_buffer("class_means", class_means.float().clone())

    @classmethod
    def build(cls, in_dim: int, num_classes: int, metric: str = "cosine") -> "NCMHead":
        """Zero means, to be filled by ``load_state_dict`` (use ``from_features`` otherwise)."""
        return cls(torch.zeros(num_classes, in_dim), metric)

    @classmethod
    def from_features(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      metric: str = "cosine") -> "NCMHead":
        """μ_c = mean of ``features[labels == c]``; every class needs at least one feature."""
        counts = torch.bincount(labels, minlength=num_classes)
        if len(counts) > num_classes or not counts.all():
            empty = (counts[:num_classes] == 0).nonzero().flatten().tolist()
            raise DataError(f"NCM needs labels in [0, {num_classes}) and one feature per class; "
                            f"max label {int(labels.max())}, empty classes {empty}: pass the full "
                            "training features")
        sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float32,
                           device=features.device).index_add_(0, labels, features.float())
        return cls(sums / counts[:, None], metric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.class_means.dtype)
        if self.metric == "cosine":
            return F.linear(F.normalize(x, dim=1), F.normalize(self.class_means, dim=1))
        return -torch.cdist(F.normalize(x, dim=1), F.normalize(self.class_means, dim=1))

    def class_weight(self) -> torch.Tensor:
        return self.class_means
