"""Method losses of the seed papers: IWB (seed 000), GraLoss (seed 001), BFS + review set (seed 004),
and the MaxNorm projection (weight balancing). Hand-computed values on tiny examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longtail.engine.maxnorm import MaxNorm
from longtail.errors import ConfigError, DataError
from longtail.losses.base import LOSSES, build_loss
from longtail.losses.bfs import BalancedFocalSoftmaxLoss, bwlm_head_classes, review_set_indices
from longtail.losses.class_balanced import CBCrossEntropyLoss, CBSigmoidFocalLoss, class_balanced_weights
from longtail.losses.gradual import GradualLogitAdjustedLoss, gradual_alpha
from longtail.losses.iwb import (
    InverseWeightBalancingLoss,
    hardness_coefficient,
    iwb_divergence,
    norm_coefficient,
)
from longtail.losses.logit_adjust import BalancedSoftmaxLoss, LogitAdjustedLoss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: thread start-up dominates, and the test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sig(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


class FixedHead(nn.Module):
    """A head exposing a learnable W through class_weight()."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone().float())

    def forward(self, x):
        return x @ self.weight.t()

    def class_weight(self):
        return self.weight


# ---------------------------------------------------------------------------------------------
# IWB
# Tiny example used throughout: 2 classes, counts [7, 1] (N = 8), 2-dim features.
#   W = [[2, 0], [0, 1]]  -> ||W|| = [2, 1]
#   x1 = [1, 0]: cos(W0, x1) = 1, cos(W1, x1) = 0  -> HC = [(1-1)/2, (1-0)/2] = [0, 0.5]
#   x2 = [0, 3]: cos(W0, x2) = 0, cos(W1, x2) = 1  -> HC = [0.5, 0]
#   NC = log2(8 / (7+1)), log2(8 / (1+1)) = [0, 2]
#   lam = 1: P1 = NC * HC1 = [0, 1], P2 = [0, 0]
#   q = softmax([2, 1]) = [s(1), s(-1)] = [0.7310586, 0.2689414]   (s = logistic sigmoid)
#   p1 = softmax([0, 1]) = [s(-1), s(1)];  p2 = [0.5, 0.5]
# ---------------------------------------------------------------------------------------------
W_TINY = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
X_TINY = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
COUNTS_TINY = [7, 1]
Q0, Q1 = sig(1.0), sig(-1.0)
# KL(q || p1) = q0 log(q0/p0) + q1 log(q1/p1) = q0*(1) + q1*(-1) = s(1) - s(-1) = tanh(1/2)
KL1 = Q0 - Q1
# KL(q || uniform) = log 2 + q0 log q0 + q1 log q1
KL2 = math.log(2) + Q0 * math.log(Q0) + Q1 * math.log(Q1)
# reversed: KL(p1 || q) = s(-1)*(-1) + s(1)*(1) = tanh(1/2) again; KL(u || q) = -log 2 - (log q0 + log q1)/2
KL1_REV = Q0 - Q1
KL2_REV = -math.log(2) - 0.5 * (math.log(Q0) + math.log(Q1))


def test_norm_coefficient_by_hand():
    # log2(8/8) = 0, log2(8/2) = 2
    assert torch.allclose(norm_coefficient([7, 1]), torch.tensor([0.0, 2.0]))
    # N = 4: log2(4/4) = 0, log2(4/2) = 1
    assert torch.allclose(norm_coefficient([3, 1]), torch.tensor([0.0, 1.0]))
    # the released code's natural log: ln(8/2) = ln 4
    assert torch.allclose(norm_coefficient([7, 1], log_base=math.e), torch.tensor([0.0, math.log(4.0)]))
    nc = norm_coefficient([500, 200, 50, 5])
    assert nc.dtype == torch.float32
    assert bool((nc[1:] > nc[:-1]).all()), "NC must grow towards the tail"
    assert bool((nc > 0).all())
    with pytest.raises(ValueError):
        norm_coefficient([3, 0])


def test_hardness_coefficient_by_hand():
    hc = hardness_coefficient(W_TINY, X_TINY)
    assert torch.allclose(hc, torch.tensor([[0.0, 0.5], [0.5, 0.0]]), atol=1e-7)
    # x = [1, 1]: cos with either row = 1/sqrt(2) -> (1 - 0.7071068)/2 = 0.1464466
    hc = hardness_coefficient(W_TINY, torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(hc, torch.full((1, 2), (1 - 1 / math.sqrt(2)) / 2), atol=1e-7)
    # opposite direction: cos = -1 -> HC = 1; feature scale does not matter
    hc = hardness_coefficient(W_TINY, torch.tensor([[-5.0, 0.0]]))
    assert torch.allclose(hc, torch.tensor([[1.0, 0.5]]), atol=1e-7)
    # scalar form (own class only): x1 with y=1 -> 0.5, x2 with y=1 -> 0
    hc = hardness_coefficient(W_TINY, X_TINY, targets=torch.tensor([1, 1]))
    assert hc.shape == (2, 1)
    assert torch.allclose(hc, torch.tensor([[0.5], [0.0]]), atol=1e-7)
    rand = hardness_coefficient(torch.randn(5, 7), torch.randn(9, 7))
    assert rand.shape == (9, 5) and bool((rand >= 0).all()) and bool((rand <= 1).all())


def test_iwb_divergence_by_hand():
    norms = W_TINY.norm(dim=1)
    p = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    kl = iwb_divergence(norms, p)
    assert torch.allclose(kl, torch.tensor([KL1, KL2]), atol=1e-6)
    # the code's reversed KL, summed over the batch: per-sample values carry a factor B = 2
    rev = iwb_divergence(norms, p, kl_direction="code_reversed_sum")
    assert torch.allclose(rev, 2 * torch.tensor([KL1_REV, KL2_REV]), atol=1e-6)
    assert rev.mean().item() == pytest.approx(KL1_REV + KL2_REV, abs=1e-6)
    # the same thing with torch's kl_div (input = log q, target = p, reduction="sum")
    ref = F.kl_div(F.log_softmax(norms, 0).expand(2, -1), F.softmax(p, 1), reduction="sum")
    assert rev.mean().item() == pytest.approx(ref.item(), abs=1e-6)
    # MSE on raw values: ((2-0)^2 + (1-1)^2)/2 = 2, ((2-0)^2 + (1-0)^2)/2 = 2.5
    mse = iwb_divergence(norms, p, divergence="mse")
    assert torch.allclose(mse, torch.tensor([2.0, 2.5]))
    # KL is zero when softmax(P) = softmax(|W|) (a constant shift of P changes nothing)
    zero = iwb_divergence(norms, norms.unsqueeze(0) + 3.0)
    assert zero.abs().max().item() < 1e-6
    with pytest.raises(ConfigError):
        iwb_divergence(norms, p, divergence="l1")


def _iwb(base="ce", **kw):
    head = FixedHead(W_TINY)
    return InverseWeightBalancingLoss(COUNTS_TINY, head=head, lam=kw.pop("lam", 1.0), base=base, **kw), head


def test_iwb_loss_total_by_hand():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    targets = torch.tensor([0, 1])
    # CE: row 1 -> -log(1/2) = ln 2; row 2 -> -log(3/4)
    ce = (math.log(2.0) - math.log(0.75)) / 2
    loss, _ = _iwb("ce")
    assert loss.uses_features
    total = loss(logits, targets, features=X_TINY)
    assert total.item() == pytest.approx(ce + (KL1 + KL2) / 2, abs=1e-6)
    # KL term alone, and the default CB base (composed, not re-implemented)
    only, _ = _iwb(None)
    assert only(logits, targets, features=X_TINY).item() == pytest.approx((KL1 + KL2) / 2, abs=1e-6)
    cb = InverseWeightBalancingLoss(COUNTS_TINY, head=FixedHead(W_TINY), lam=1.0)  # default base
    assert isinstance(cb.base, CBCrossEntropyLoss)
    expect = CBCrossEntropyLoss(COUNTS_TINY)(logits, targets).item() + (KL1 + KL2) / 2
    assert cb(logits, targets, features=X_TINY).item() == pytest.approx(expect, abs=1e-6)
    # per-sample weights apply to both terms: weight 0 on the second sample
    w = torch.tensor([1.0, 0.0])
    got = loss(logits, targets, features=X_TINY, sample_weight=w).item()
    assert got == pytest.approx((math.log(2.0) + KL1) / 2, abs=1e-6)
    # per_sample = base + divergence
    ps = loss.per_sample(logits, targets, X_TINY)
    assert torch.allclose(ps, torch.tensor([math.log(2.0) + KL1, -math.log(0.75) + KL2]), atol=1e-6)


def test_iwb_ablations_by_hand():
    logits = torch.zeros(2, 2)
    # scalar HC, targets [1, 0]: HC1 = (1 - cos(W1, x1))/2 = 0.5, HC2 = (1 - cos(W0, x2))/2 = 0.5
    # -> P = NC * 0.5 = [0, 1] for both samples -> KL1 each
    loss, _ = _iwb(None, hc="scalar")
    assert loss(logits, torch.tensor([1, 0]), features=X_TINY).item() == pytest.approx(KL1, abs=1e-6)
    # scalar HC, targets [0, 1]: both HC = 0 -> P = [0, 0] -> KL2 each
    assert loss(logits, torch.tensor([0, 1]), features=X_TINY).item() == pytest.approx(KL2, abs=1e-6)
    # NC alone: P = [0, 2]; p = [s(-2), s(2)]; log(q0/p0) = log s(1) - log s(-2) = a,
    # log(q1/p1) = a - 3 (log-odds of q is 1, of p is -2) -> KL = q0 a + q1 (a - 3) = a - 3 q1
    a = math.log(Q0) - math.log(sig(-2.0))
    loss, _ = _iwb(None, nc_only=True)
    assert loss(logits, torch.tensor([0, 1]), features=X_TINY).item() == pytest.approx(a - 3 * Q1, abs=1e-6)
    # MSE ablation: mean of [2, 2.5]
    loss, _ = _iwb(None, divergence="mse")
    assert loss(logits, torch.tensor([0, 1]), features=X_TINY).item() == pytest.approx(2.25, abs=1e-6)
    # the released code: ln, lam = 0.01, reversed KL summed over the batch
    code = InverseWeightBalancingLoss(
        COUNTS_TINY, head=FixedHead(W_TINY), lam=0.01, base=None, log_base=math.e,
        kl_direction="code_reversed_sum",
    )
    p = 0.01 * torch.tensor([0.0, math.log(4.0)]) * hardness_coefficient(W_TINY, X_TINY)
    ref = F.kl_div(F.log_softmax(W_TINY.norm(dim=1), 0).expand(2, -1), F.softmax(p, 1), reduction="sum")
    got = code(logits, torch.tensor([0, 1]), features=X_TINY)
    assert got.item() == pytest.approx(ref.item(), abs=1e-6)


def test_iwb_gradients_and_errors():
    logits = torch.zeros(2, 2, requires_grad=True)
    loss, head = _iwb("ce")
    loss(logits, torch.tensor([0, 1]), features=X_TINY).backward()
    assert head.weight.grad is not None and bool(torch.isfinite(head.weight.grad).all())
    assert logits.grad is not None
    # detaching P changes the gradient, not the value
    det, head_d = _iwb("ce", detach_target=True)
    v1 = det(logits, torch.tensor([0, 1]), features=X_TINY)
    v1.backward()
    v0 = loss(logits, torch.tensor([0, 1]), features=X_TINY)
    assert v1.item() == pytest.approx(v0.item(), abs=1e-7)
    assert not torch.allclose(head_d.weight.grad, head.weight.grad)
    # head held by reference, not registered
    assert len(list(loss.parameters())) == 0
    assert "weight" not in " ".join(loss.state_dict().keys())
    with pytest.raises(ConfigError):
        loss(logits, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError):
        InverseWeightBalancingLoss(COUNTS_TINY)(logits, torch.tensor([0, 1]), features=X_TINY)
    with pytest.raises(ConfigError):
        InverseWeightBalancingLoss(COUNTS_TINY, hc="matrix")
    with pytest.raises(ConfigError):
        InverseWeightBalancingLoss([1, 2, 3], head=FixedHead(W_TINY))(
            torch.zeros(2, 3), torch.tensor([0, 1]), features=X_TINY
        )
    assert isinstance(build_loss("iwb", class_counts=COUNTS_TINY, head=FixedHead(W_TINY)), InverseWeightBalancingLoss)


def test_iwb_refuses_options_that_would_be_ignored_and_reads_log_base_e():
    with pytest.raises(ConfigError, match="nc_only"):
        InverseWeightBalancingLoss(COUNTS_TINY, nc_only=True, hc="scalar")
    with pytest.raises(ConfigError, match="kl_direction"):
        InverseWeightBalancingLoss(COUNTS_TINY, divergence="mse", kl_direction="code_reversed_sum")
    with pytest.raises(ConfigError, match="log_base"):
        InverseWeightBalancingLoss(COUNTS_TINY, log_base="two")
    natural = InverseWeightBalancingLoss(COUNTS_TINY, log_base="e")
    torch.testing.assert_close(natural.nc, norm_coefficient(COUNTS_TINY, log_base=math.e))


def test_iwb_with_a_real_linear_head():
    from longtail.models.heads import LinearHead

    torch.manual_seed(0)
    head = LinearHead(6, 4)
    loss = InverseWeightBalancingLoss([40, 20, 5, 2], head=head)
    x = torch.randn(8, 6)
    y = torch.randint(0, 4, (8,))
    out = loss(head(x), y, features=x)
    out.backward()
    assert torch.isfinite(out) and head.fc.weight.grad is not None


@pytest.mark.parametrize("detach", [False, True])
def test_iwb_kl_alone_inverts_the_norm_order(detach):
    """Gradient steps on the KL term alone make tail norms overtake head norms.

    Features come in pairs (x, -x), so for every class the batch-mean HC is exactly 1/2 and the
    mean target is lam * NC / 2, increasing towards the tail. For the paper's KL the minimiser of
    mean_i KL(q || softmax(P_i)) over q is softmax(mean_i P_i), so with P fixed (detach) the
    converged norm gaps are exactly lam/2 * (NC_c - NC_0).
    """
    torch.manual_seed(0)
    counts = [1000, 100, 10, 1]
    c, d = 4, 8
    w0 = F.normalize(torch.randn(c, d), dim=1) * torch.tensor([4.0, 3.0, 2.0, 1.0])[:, None]
    head = FixedHead(w0)
    loss = InverseWeightBalancingLoss(counts, head=head, base=None, detach_target=detach)
    half = torch.randn(16, d)
    feats = torch.cat([half, -half])
    y = torch.zeros(32, dtype=torch.long)
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    start = loss(torch.zeros(32, c), y, features=feats).item()
    norms = [head.weight.detach().norm(dim=1)]
    for _ in range(150):
        opt.zero_grad()
        loss(torch.zeros(32, c), y, features=feats).backward()
        opt.step()
        norms.append(head.weight.detach().norm(dim=1))
    end = loss(torch.zeros(32, c), y, features=feats).item()
    assert end < 0.05 * start
    # the first step already moves the tail up relative to the head
    assert norms[1][3] / norms[1][0] > norms[0][3] / norms[0][0]
    final = norms[-1]
    assert bool((final[1:] > final[:-1]).all()), f"norms should increase towards the tail: {final}"
    gaps = final - final[0]
    expect = 0.15 / 2 * (norm_coefficient(counts) - norm_coefficient(counts)[0])
    tol = 1e-3 if detach else 0.05
    assert torch.allclose(gaps, expect, atol=tol), (gaps, expect)


# ---------------------------------------------------------------------------------------------
# GraLoss
# ---------------------------------------------------------------------------------------------
def test_gradual_alpha_shapes():
    t = 10
    for schedule in ("convex", "linear", "concave"):
        vals = [gradual_alpha(e, t, schedule=schedule) for e in range(t + 1)]
        assert vals[0] == 0.0
        assert all(b > a for a, b in zip(vals, vals[1:])), schedule
        assert vals[-1] == pytest.approx(1.0)  # s*(c-1) with c = 2, s = 1
        # inclusive_end: the last epoch (T-1) reaches the end value
        assert gradual_alpha(t - 1, t, schedule=schedule, inclusive_end=True) == pytest.approx(1.0)
    # mid-training: 2^0.5 - 1 = 0.4142 < 0.5 < 2 - 2^0.5 = 0.5858
    assert gradual_alpha(5, 10) == pytest.approx(math.sqrt(2) - 1)
    assert gradual_alpha(5, 10, schedule="linear") == pytest.approx(0.5)
    assert gradual_alpha(5, 10, schedule="concave") == pytest.approx(2 - math.sqrt(2))
    for e in range(1, t):
        cv, ln, cc = (gradual_alpha(e, t, schedule=s) for s in ("convex", "linear", "concave"))
        assert cv < ln < cc
    # last training epoch, 0-based: 2^(9/10) - 1
    assert gradual_alpha(9, 10) == pytest.approx(2 ** 0.9 - 1)
    # s scales, c changes the end value: convex c = 4 ends at 3
    assert gradual_alpha(5, 10, s=0.5) == pytest.approx(0.5 * (math.sqrt(2) - 1))
    assert gradual_alpha(10, 10, c=4.0) == pytest.approx(3.0)
    with pytest.raises(ConfigError):
        gradual_alpha(0, 10, schedule="cubic")
    with pytest.raises(ConfigError):
        gradual_alpha(0, 10, c=1.0)
    with pytest.raises(ConfigError):
        gradual_alpha(11, 10)


def test_graloss_limits_and_hand_value():
    counts = [3, 1]
    torch.manual_seed(0)
    logits = torch.randn(6, 2)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    loss = GradualLogitAdjustedLoss(counts)
    assert isinstance(loss, LogitAdjustedLoss)
    buf = loss.scale.data_ptr()
    loss.on_epoch_start(0, 10)  # alpha = 0: cross-entropy
    assert loss(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-6)
    loss.on_epoch_start(10, 10)  # alpha = 1: logit-adjusted loss with tau = 1
    assert loss(logits, y).item() == pytest.approx(LogitAdjustedLoss(counts, tau=1.0)(logits, y).item(), abs=1e-6)
    assert loss.scale.data_ptr() == buf, "alpha must be updated in place (graph-safe)"
    # hand value: z = 0, y = 1, alpha = 1 -> adjusted logits = log pi = [ln .75, ln .25]
    # -> loss = -log(0.25 / (0.75 + 0.25)) = ln 4
    assert loss(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(4.0), abs=1e-6)
    # mid-training alpha = sqrt(2) - 1 (convex): loss = -log(.25^a / (.75^a + .25^a))
    loss.on_epoch_start(5, 10)
    a = math.sqrt(2) - 1
    expect = -math.log(0.25**a / (0.75**a + 0.25**a))
    assert loss(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(expect, abs=1e-6)
    assert "graloss" in LOSSES
    built = build_loss("graloss", class_counts=counts, schedule="concave", s=0.5)
    built.on_epoch_start(5, 10)
    assert built.scale.item() == pytest.approx(0.5 * (2 - math.sqrt(2)))


# ---------------------------------------------------------------------------------------------
# BFS and the review set
# ---------------------------------------------------------------------------------------------
def test_bfs_limits():
    counts = [50, 20, 5, 2]
    torch.manual_seed(0)
    logits = torch.randn(16, 4)
    y = torch.randint(0, 4, (16,))
    bs = BalancedSoftmaxLoss(counts)(logits, y)
    cbf = CBSigmoidFocalLoss(counts, beta=0.9999, gamma=2.0)(logits, y)
    assert BalancedFocalSoftmaxLoss(counts, alpha=0.0)(logits, y).item() == pytest.approx(bs.item(), abs=1e-6)
    assert BalancedFocalSoftmaxLoss(counts, alpha=1.0)(logits, y).item() == pytest.approx(cbf.item(), abs=1e-6)
    mix = BalancedFocalSoftmaxLoss(counts)  # alpha = 0.1 default
    assert mix(logits, y).item() == pytest.approx(0.1 * cbf.item() + 0.9 * bs.item(), abs=1e-6)
    assert torch.allclose(mix.cb_focal.class_weights, class_balanced_weights(counts, 0.9999))
    with pytest.raises(ConfigError):
        BalancedFocalSoftmaxLoss(counts, alpha=1.5)


def test_bfs_by_hand():
    # counts [3, 1], z = [0, 0], y = 0, beta = 0 (CB weights all 1), gamma = 2:
    #   BS = -log(3 e^0 / (3 e^0 + 1 e^0)) = -log(3/4) = 0.2876821
    #   CB-focal: p^t = sigmoid(0) = 0.5 for both one-vs-all terms; each (1-0.5)^2 * (-log 0.5)
    #   = 0.25 * ln 2; summed over the 2 classes = 0.5 ln 2 = 0.3465736
    #   BFS = 0.1 * 0.3465736 + 0.9 * 0.2876821 = 0.2935712
    loss = BalancedFocalSoftmaxLoss([3, 1], alpha=0.1, beta=0.0, gamma=2.0)
    got = loss(torch.zeros(1, 2), torch.tensor([0])).item()
    assert got == pytest.approx(0.1 * 0.5 * math.log(2) + 0.9 * -math.log(0.75), abs=1e-6)
    assert got == pytest.approx(0.2935712, abs=1e-6)
    assert isinstance(build_loss("bfs", class_counts=[3, 1]), BalancedFocalSoftmaxLoss)


def test_review_set_counts():
    # class sizes by id: [4, 10, 2, 8, 3, 6] -> ranked ids 1(10), 3(8), 5(6) | 0(4), 4(3), 2(2)
    # m = 6 // 2 = 3 head classes {1, 3, 5}, subsampled to n_{m+1} = 4; tail kept whole
    counts = np.array([4, 10, 2, 8, 3, 6])
    labels = np.repeat(np.arange(6), counts)
    rng = np.random.default_rng(1)
    labels = labels[rng.permutation(labels.size)]
    idx = review_set_indices(labels, counts, seed=0)
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0), "sorted and unique"
    assert np.array_equal(np.bincount(labels[idx], minlength=6), [4, 4, 2, 4, 3, 4])
    for c in (0, 2, 4):  # tail classes whole
        assert set(np.flatnonzero(labels == c)) <= set(idx.tolist())
    assert np.array_equal(idx, review_set_indices(labels, counts, seed=0)), "seeded"
    assert not np.array_equal(idx, review_set_indices(labels, counts, seed=3))
    # override m = 1: only class 1 capped, at n_2 = 8
    idx1 = review_set_indices(labels, counts, num_head_classes=1)
    assert np.array_equal(np.bincount(labels[idx1], minlength=6), [4, 8, 2, 8, 3, 6])
    # odd C = 5: m = 2; sizes [9, 7, 5, 3, 1] -> heads capped at n_3 = 5
    c5 = np.array([9, 7, 5, 3, 1])
    l5 = np.repeat(np.arange(5), c5)
    assert np.array_equal(np.bincount(l5[review_set_indices(l5, c5)], minlength=5), [5, 5, 5, 3, 1])
    assert np.array_equal(bwlm_head_classes(counts), [1, 3, 5])
    assert np.array_equal(bwlm_head_classes(c5), [0, 1])
    with pytest.raises(DataError):
        review_set_indices(labels, counts + 1)
    with pytest.raises(ConfigError):
        review_set_indices(labels, counts, num_head_classes=6)


# ---------------------------------------------------------------------------------------------
# MaxNorm
# ---------------------------------------------------------------------------------------------
def test_maxnorm_by_hand():
    w = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.3, 0.4]])  # norms 3, 1, 0.5
    before = w.clone()
    MaxNorm(2.0).apply_(w)
    assert torch.allclose(w[0], torch.tensor([2.0, 0.0]))  # 3 -> 2, same direction
    assert torch.equal(w[1:], before[1:]), "rows under the cap are untouched"
    # the weight-balancing code's rule: min + 0.1 * (max - min) = 0.5 + 0.1 * 2.5 = 0.75
    w = before.clone()
    mn = MaxNorm.from_initial_norms(w)
    assert mn.threshold.item() == pytest.approx(0.75)
    mn.apply_(w)
    assert torch.allclose(w.norm(dim=1), torch.tensor([0.75, 0.75, 0.5]))
    assert torch.equal(w[2], before[2])
    norms = before.norm(dim=1)
    assert MaxNorm.threshold_from_norms(norms, "max").item() == pytest.approx(3.0)
    assert MaxNorm.threshold_from_norms(norms, "mean").item() == pytest.approx(1.5)
    assert torch.allclose(MaxNorm.threshold_from_norms(norms, "per_class"), norms)
    with pytest.raises(ConfigError):
        MaxNorm(rule="median")


def test_maxnorm_never_exceeds_cap_during_pgd():
    torch.manual_seed(0)
    c, d = 12, 16
    w = nn.Parameter(torch.randn(c, d) * torch.linspace(0.2, 3.0, c)[:, None])
    cap = torch.rand(c) * 2 + 0.5  # per-class caps
    mn = MaxNorm(cap)
    opt = torch.optim.SGD([w], lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        (-w.norm(dim=1).sum()).backward()  # pushes every norm up
        opt.step()
        under = w.detach().norm(dim=1) <= cap
        before = w.detach().clone()
        mn.apply_(w.data)
        assert bool((w.detach().norm(dim=1) <= cap * (1 + 1e-6)).all())
        assert torch.equal(w.detach()[under], before[under])
    # idempotent; zero rows and a zero cap stay finite
    after = w.detach().clone()
    mn.apply_(w.data)
    assert torch.allclose(w.detach(), after)
    z = torch.zeros(3, 4)
    MaxNorm(0.0).apply_(z)
    assert torch.equal(z, torch.zeros(3, 4))
    x = torch.randn(3, 4)
    MaxNorm(0.0).apply_(x)
    assert torch.equal(x, torch.zeros(3, 4))


def test_maxnorm_lazy_threshold_and_linear_head():
    from longtail.models.heads import LinearHead

    torch.manual_seed(0)
    head = LinearHead(8, 5)
    initial = head.class_weight().detach().norm(dim=1)
    mn = MaxNorm()  # threshold from the first weight seen
    mn.apply_(head.class_weight().data)
    thr = initial.min() + 0.1 * (initial.max() - initial.min())
    assert mn.threshold.item() == pytest.approx(thr.item(), rel=1e-6)
    assert bool((head.class_weight().detach().norm(dim=1) <= thr * (1 + 1e-6)).all())
