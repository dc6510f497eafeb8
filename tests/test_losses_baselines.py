"""Baseline losses against values computed by hand (numpy / math), gradients, and limits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.errors import ConfigError
from longtail.losses import LOSSES, Loss, build_loss  # the package import fills the registry
from longtail.losses.class_balanced import class_balanced_weights
from longtail.losses.distillation import DistillationLoss
from longtail.losses.label_aware_smoothing import label_aware_smoothing_factors
from longtail.losses.ldam import ldam_margins
from longtail.losses.logit_adjust import posthoc_logit_adjustment

# A small example: 3 samples, 3 classes, counts [100, 20, 5] (class 0 largest).
Z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0], [-0.3, 0.2, 1.5]])
Y = np.array([0, 2, 1])
COUNTS = [100, 20, 5]
BASELINE_NAMES = [
    "ce", "focal", "sigmoid_focal", "cb_ce", "cb_focal", "cb_sigmoid_focal", "cb_softmax_bce",
    "ldam", "drw", "logit_adjusted", "balanced_softmax", "seesaw", "equalization", "ghm_c",
    "label_aware_smoothing",
]


def zt(requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(Z, dtype=torch.float32, requires_grad=requires_grad)


def yt() -> torch.Tensor:
    return torch.tensor(Y, dtype=torch.long)


def np_softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def np_ce(row, y):
    return -math.log(np_softmax(row)[y])


def close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=tol, atol=tol)


def per_sample(loss: Loss, z=None, y=None) -> np.ndarray:
    return loss.per_sample(zt() if z is None else z, yt() if y is None else y).detach().numpy()


# --------------------------------------------------------------------------------------- registry


def test_every_baseline_is_registered_and_builds_with_counts():
    for name in BASELINE_NAMES:
        assert name in LOSSES
        loss = build_loss(name, class_counts=COUNTS)
        assert isinstance(loss, Loss)
        out = loss(zt(), yt())
        assert out.shape == () and torch.isfinite(out)


def test_bf16_logits_are_computed_in_float32():
    for name in BASELINE_NAMES:
        loss = build_loss(name, class_counts=COUNTS)
        if name == "equalization":
            loss = build_loss(name, class_counts=COUNTS, gamma=1.0)
        z16 = zt().to(torch.bfloat16)
        out = loss.per_sample(z16, yt())
        assert out.dtype == torch.float32, name
        ref = build_loss(name, class_counts=COUNTS, **({"gamma": 1.0} if name == "equalization" else {}))
        close(out.detach().numpy(), ref.per_sample(z16.float(), yt()).detach().numpy(), tol=1e-4)


def test_class_constants_are_buffers_that_follow_the_module():
    for name in ["cb_ce", "ldam", "logit_adjusted", "balanced_softmax", "equalization", "seesaw",
                 "label_aware_smoothing", "drw", "ghm_c"]:
        loss = build_loss(name, class_counts=COUNTS)
        bufs = dict(loss.named_buffers())
        assert bufs, name
        moved = loss.to("meta")
        assert all(b.device.type == "meta" for b in moved.buffers()), name


# --------------------------------------------------------------------------------------- CE, focal


def test_ce_matches_hand_computation_and_label_smoothing():
    expected = [np_ce(Z[i], Y[i]) for i in range(3)]
    close(per_sample(build_loss("ce")), expected)
    eps = 0.2
    smoothed = []
    for i in range(3):
        logp = np.log(np_softmax(Z[i]))
        smoothed.append(-(1 - eps) * logp[Y[i]] - eps / 3 * logp.sum())
    close(per_sample(build_loss("ce", label_smoothing=eps)), smoothed)
    assert float(build_loss("ce")(zt(), yt())) == pytest.approx(np.mean(expected), rel=1e-6)
    w = torch.tensor([1.0, 0.0, 2.0])
    assert float(build_loss("ce")(zt(), yt(), sample_weight=w)) == pytest.approx(
        (expected[0] + 2 * expected[2]) / 3, rel=1e-6)


def test_softmax_focal_hand_values_and_gamma_zero_is_ce():
    gamma = 2.0
    expected = []
    for i in range(3):
        p = np_softmax(Z[i])[Y[i]]
        expected.append(-((1 - p) ** gamma) * math.log(p))
    close(per_sample(build_loss("focal")), expected)
    close(per_sample(build_loss("focal", gamma=0.0)), [np_ce(Z[i], Y[i]) for i in range(3)])
    alpha = [0.5, 1.0, 2.0]
    close(per_sample(build_loss("focal", alpha=alpha)), [alpha[Y[i]] * expected[i] for i in range(3)])


def _ldam_code_focal(z, y, w, gamma):
    """The LDAM-DRW code's FocalLoss by hand: c = w_y CE, (1 - exp(-c))^gamma c, mean over the batch."""
    c = np.array([w[y[i]] * np_ce(z[i], y[i]) for i in range(len(y))])
    return (1 - np.exp(-c)) ** gamma * c


def test_softmax_focal_ldam_code_weight_form_puts_the_weight_inside_the_modulating_factor():
    """Issue 17: with per-class weights the LDAM-DRW code's form differs from Lin et al.'s; without, it is the same."""
    alpha, gamma = [0.5, 2.0, 3.0], 1.0
    code = build_loss("focal", gamma=gamma, alpha=alpha, weight_form="ldam_code")
    expected = _ldam_code_focal(Z, Y, alpha, gamma)
    close(per_sample(code), expected)
    assert float(code(zt(), yt())) == pytest.approx(expected.mean(), rel=1e-5)  # mean over B, as the code
    outside = per_sample(build_loss("focal", gamma=gamma, alpha=alpha))
    assert not np.allclose(outside, expected, rtol=1e-3)
    close(per_sample(build_loss("focal", gamma=gamma, weight_form="ldam_code")), per_sample(build_loss("focal", gamma=gamma)))
    with pytest.raises(ConfigError, match="weight_form"):
        build_loss("focal", weight_form="inside")


def test_drw_with_the_ldam_code_focal_is_the_ldam_drw_codes_focal_drw():
    """drw(base=focal, weight_form=ldam_code, normalize=batch) after the switch = FocalLoss(weight=CB, gamma=1)
    of the LDAM-DRW code; the default drw(base=focal) stays sum_i w_yi focal_i / sum_i w_yi."""
    w = class_balanced_weights(COUNTS, 0.9999).numpy()
    code = build_loss("drw", class_counts=COUNTS, base="focal", gamma=1.0, weight_form="ldam_code",
                      normalize="batch", start_epoch=0)
    code.on_epoch_start(0, 2)
    assert float(code(zt(), yt())) == pytest.approx(_ldam_code_focal(Z, Y, w, 1.0).mean(), rel=1e-5)
    default = build_loss("drw", class_counts=COUNTS, base="focal", gamma=1.0, start_epoch=0)
    default.on_epoch_start(0, 2)
    focal = per_sample(build_loss("focal", gamma=1.0))
    wy = w[Y]
    assert float(default(zt(), yt())) == pytest.approx(float((wy * focal).sum() / wy.sum()), rel=1e-5)


def test_softmax_focal_gradient_finite_when_confident():
    z = torch.tensor([[60.0, -60.0, -60.0]], requires_grad=True)
    for gamma in (0.5, 2.0):
        z.grad = None
        build_loss("focal", gamma=gamma)(z, torch.tensor([0])).backward()
        assert torch.isfinite(z.grad).all()


def test_sigmoid_focal_hand_values():
    gamma, alpha = 2.0, 0.25

    def sig(x):
        return 1.0 / (1.0 + math.exp(-x))

    plain, balanced = [], []
    for i in range(3):
        s_plain = s_bal = 0.0
        for j in range(3):
            p_t = sig(Z[i, j]) if j == Y[i] else 1.0 - sig(Z[i, j])
            term = -((1 - p_t) ** gamma) * math.log(p_t)
            s_plain += term
            s_bal += (alpha if j == Y[i] else 1 - alpha) * term
        plain.append(s_plain)
        balanced.append(s_bal)
    close(per_sample(build_loss("sigmoid_focal")), plain)
    close(per_sample(build_loss("sigmoid_focal", alpha=alpha)), balanced)
    # sum over classes, mean over the batch
    assert float(build_loss("sigmoid_focal")(zt(), yt())) == pytest.approx(np.mean(plain), rel=1e-6)


# --------------------------------------------------------------------------------------- class-balanced


def test_cb_weights_by_hand_and_sum_to_C():
    beta = 0.9
    raw = [(1 - beta) / (1 - beta ** n) for n in (4, 2, 1)]  # 0.29078, 0.52632, 1.0
    expected = [3 * r / sum(raw) for r in raw]
    close(class_balanced_weights([4, 2, 1], beta=beta).numpy(), expected)
    for counts in ([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], COUNTS):
        w = class_balanced_weights(counts, beta=0.9999)
        assert float(w.sum()) == pytest.approx(len(counts), rel=1e-5)
        assert bool((w[1:] >= w[:-1]).all())  # rarer class, larger weight
    close(class_balanced_weights(COUNTS, beta=0.0).numpy(), [1.0, 1.0, 1.0])
    # beta = 1: the inverse-frequency limit; counts 4, 2, 1 -> 1/4, 1/2, 1 normalised to sum 3
    close(class_balanced_weights([4, 2, 1], beta=1.0).numpy(), [3 / 7, 6 / 7, 12 / 7])
    close(class_balanced_weights([4, 2, 1], beta=1 - 1e-9).numpy(), [3 / 7, 6 / 7, 12 / 7], tol=1e-4)
    with pytest.raises(ConfigError):
        class_balanced_weights(COUNTS, beta=1.5)


def cb_w(beta=0.9999):
    raw = np.array([(1 - beta) / (1 - beta ** n) for n in COUNTS])
    return raw / raw.sum() * 3


def test_cb_ce_paper_definition_and_weight_normalisation():
    w = cb_w()
    ce_vals = np.array([np_ce(Z[i], Y[i]) for i in range(3)])
    wy = w[Y]
    loss = build_loss("cb_ce", class_counts=COUNTS)
    close(per_sample(loss), wy * ce_vals)
    assert float(loss(zt(), yt())) == pytest.approx(float(np.mean(wy * ce_vals)), rel=1e-5)
    loss_w = build_loss("cb_ce", class_counts=COUNTS, normalize="weights")
    assert float(loss_w(zt(), yt())) == pytest.approx(float((wy * ce_vals).sum() / wy.sum()), rel=1e-5)
    ref = F.cross_entropy(zt(), yt(), weight=torch.tensor(w, dtype=torch.float32))
    assert float(loss_w(zt(), yt())) == pytest.approx(float(ref), rel=1e-5)


def test_cb_focal_and_cb_sigmoid_focal_hand_values():
    w, gamma = cb_w(), 2.0
    sm = []
    sg = []
    for i in range(3):
        p = np_softmax(Z[i])[Y[i]]
        sm.append(w[Y[i]] * -((1 - p) ** gamma) * math.log(p))
        total = 0.0
        for j in range(3):
            s = 1.0 / (1.0 + math.exp(-Z[i, j]))
            p_t = s if j == Y[i] else 1 - s
            total += -((1 - p_t) ** gamma) * math.log(p_t)
        sg.append(w[Y[i]] * total)  # w_y applied to all C terms of the sample
    close(per_sample(build_loss("cb_focal", class_counts=COUNTS)), sm)
    close(per_sample(build_loss("cb_sigmoid_focal", class_counts=COUNTS)), sg)


def test_cb_softmax_bce_matches_the_weight_balancing_code_form():
    w = cb_w()
    expected = []
    for i in range(3):
        p = np_softmax(Z[i])
        bce = [-(math.log(p[j]) if j == Y[i] else math.log(1 - p[j])) for j in range(3)]
        expected.append(w[Y[i]] * sum(bce) / 3)
    loss = build_loss("cb_softmax_bce", class_counts=COUNTS)
    close(per_sample(loss), expected)
    # the code it reproduces: F.binary_cross_entropy(softmax, one_hot, weight=w_y) with mean reduction
    weights = torch.tensor(w[Y], dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    ref = F.binary_cross_entropy(zt().softmax(1), F.one_hot(yt(), 3).float(), weight=weights)
    assert float(loss(zt(), yt())) == pytest.approx(float(ref), rel=1e-5)


# --------------------------------------------------------------------------------------- LDAM, DRW


def test_ldam_margins_and_hand_values():
    m = ldam_margins(COUNTS, max_m=0.5).numpy()
    raw = np.array([n ** -0.25 for n in COUNTS])
    close(m, raw * 0.5 / raw.max())
    assert m.max() == pytest.approx(0.5)
    # margins proportional to n^(-1/4): m_c * n_c^(1/4) is the same constant for every class
    close(m * np.array(COUNTS) ** 0.25, np.full(3, m[0] * COUNTS[0] ** 0.25))
    zc = np.array([[0.9, 0.2, -0.1], [0.1, 0.3, 0.5], [-0.4, 0.6, 0.2]])  # cosine logits
    s = 30.0
    expected = []
    for i in range(3):
        row = zc[i].copy()
        row[Y[i]] -= m[Y[i]]
        expected.append(np_ce(s * row, Y[i]))
    loss = build_loss("ldam", class_counts=COUNTS)
    close(per_sample(loss, torch.tensor(zc, dtype=torch.float32)), expected, tol=1e-4)


def test_drw_switches_weights_in_place_at_start_epoch():
    zc = torch.tensor([[0.9, 0.2, -0.1], [0.1, 0.3, 0.5], [-0.4, 0.6, 0.2]])
    drw = build_loss("drw", class_counts=COUNTS, base="ldam", start_epoch=2)
    base = build_loss("ldam", class_counts=COUNTS)
    ptr = drw.weights.data_ptr()
    drw.on_epoch_start(0, 4)
    assert float(drw(zc, yt())) == pytest.approx(float(base(zc, yt())), rel=1e-6)
    drw.on_epoch_start(2, 4)
    assert drw.weights.data_ptr() == ptr
    w = cb_w()[Y]
    l = base.per_sample(zc, yt()).numpy()
    assert float(drw(zc, yt())) == pytest.approx(float((w * l).sum() / w.sum()), rel=1e-5)
    drw_b = build_loss("drw", class_counts=COUNTS, base="ce", start_epoch=0, normalize="batch")
    ce_vals = np.array([np_ce(Z[i], Y[i]) for i in range(3)])
    assert float(drw_b(zt(), yt())) == pytest.approx(float(np.mean(w * ce_vals)), rel=1e-5)
    drw.on_epoch_start(1, 4)  # back to ones (e.g. a restart)
    close(drw.weights.numpy(), [1, 1, 1])
    drw2 = build_loss("drw", class_counts=COUNTS, base="ldam", max_m=0.3, s=10.0)
    assert drw2.base.s == 10.0 and float(drw2.base.margins.max()) == pytest.approx(0.3)


# --------------------------------------------------------------------------------------- logit adjustment


def test_logit_adjusted_hand_values_tau_zero_and_set_scale():
    pi = np.array(COUNTS) / sum(COUNTS)
    for tau in (1.0, 0.5):
        expected = [np_ce(Z[i] + tau * np.log(pi), Y[i]) for i in range(3)]
        close(per_sample(build_loss("logit_adjusted", class_counts=COUNTS, tau=tau)), expected)
    la = build_loss("logit_adjusted", class_counts=COUNTS)
    ptr = la.scale.data_ptr()
    la.set_scale(0.0)
    assert la.scale.data_ptr() == ptr
    close(per_sample(la), [np_ce(Z[i], Y[i]) for i in range(3)])
    la.set_scale(torch.tensor(0.5))
    close(per_sample(la), [np_ce(Z[i] + 0.5 * np.log(pi), Y[i]) for i in range(3)])


def test_balanced_softmax_hand_values_and_limits():
    n = np.array(COUNTS, dtype=float)
    expected = []
    for i in range(3):
        e = n * np.exp(Z[i])
        expected.append(-math.log(e[Y[i]] / e.sum()))
    bs = build_loss("balanced_softmax", class_counts=COUNTS)
    close(per_sample(bs), expected)
    close(per_sample(bs), per_sample(build_loss("logit_adjusted", class_counts=COUNTS, tau=1.0)))
    close(per_sample(build_loss("balanced_softmax", class_counts=[7, 7, 7])),
          [np_ce(Z[i], Y[i]) for i in range(3)])


def test_posthoc_adjustment_subtracts_tau_log_prior():
    pi = np.array(COUNTS) / sum(COUNTS)
    for tau in (1.0, 0.7):
        out = posthoc_logit_adjustment(zt(), COUNTS, tau=tau).numpy()
        close(out, Z - tau * np.log(pi))
        out_t = posthoc_logit_adjustment(zt(), torch.tensor(COUNTS), tau=tau).numpy()
        close(out_t, Z - tau * np.log(pi))
    close(posthoc_logit_adjustment(zt(), COUNTS, tau=0.0).numpy(), Z)


# --------------------------------------------------------------------------------------- Seesaw


def seesaw_expected(z, y, n, p=0.8, q=2.0, eps=1e-2):
    out, grads = [], []
    for i in range(len(y)):
        sigma = np_softmax(z[i])
        s = np.ones(3)
        for j in range(3):
            if j == y[i]:
                continue
            m = (n[j] / n[y[i]]) ** p if n[j] < n[y[i]] else 1.0
            r = sigma[j] / max(sigma[y[i]], eps)
            c = r ** q if r > 1.0 else 1.0
            s[j] = m * c
        e = s * np.exp(z[i])
        denom = e.sum()
        out.append(-math.log(e[y[i]] / denom))
        g = e / denom
        g[y[i]] -= 1.0
        grads.append(g)
    return np.array(out), np.array(grads)


def test_seesaw_hand_values_count_update_and_gradient():
    loss = build_loss("seesaw", class_counts=COUNTS)
    loss.cum_counts.copy_(torch.tensor([10, 4, 1]))
    ptr = loss.cum_counts.data_ptr()
    z = zt(requires_grad=True)
    out = loss(z, yt())
    # the batch (labels 0, 2, 1) is counted before the loss is computed
    assert loss.cum_counts.tolist() == [11, 5, 2] and loss.cum_counts.data_ptr() == ptr
    expected, grads = seesaw_expected(Z, Y, np.array([11.0, 5.0, 2.0]))
    assert out.item() == pytest.approx(float(expected.mean()), rel=1e-5)
    out.backward()
    close(z.grad.numpy(), grads / 3)
    # both factors are active somewhere in this example (otherwise the test would prove little)
    _, g_plain = seesaw_expected(Z, Y, np.array([11.0, 5.0, 2.0]), p=0.0, q=0.0)
    assert not np.allclose(grads, g_plain)
    loss.eval()
    loss(zt(), yt())
    assert loss.cum_counts.tolist() == [11, 5, 2]


def test_seesaw_p_q_zero_is_ce():
    loss = build_loss("seesaw", class_counts=COUNTS, p=0.0, q=0.0)
    close(per_sample(loss), [np_ce(Z[i], Y[i]) for i in range(3)])


# --------------------------------------------------------------------------------------- Equalization


def test_equalization_deterministic_beta_values_and_gradient():
    # frequencies 0.8, 0.16, 0.04: with lambda = 0.05 only class 2 is a tail class
    loss = build_loss("equalization", class_counts=COUNTS, threshold=0.05, gamma=1.0)
    assert loss.tail.tolist() == [0.0, 0.0, 1.0]
    z = zt(requires_grad=True)
    out = loss(z, yt())
    expected, grads = [], []
    for i in range(3):
        w = np.array([1.0, 1.0, 0.0 if Y[i] != 2 else 1.0])
        e = w * np.exp(Z[i])
        expected.append(-math.log(math.exp(Z[i, Y[i]]) / e.sum()))
        g = e / e.sum()
        g[Y[i]] -= 1.0
        grads.append(g)
    assert out.item() == pytest.approx(float(np.mean(expected)), rel=1e-5)
    out.backward()
    close(z.grad.numpy(), np.array(grads) / 3)
    assert float(z.grad[0, 2]) == 0.0 and float(z.grad[2, 2]) == 0.0  # no discouraging gradient
    ce_vals = [np_ce(Z[i], Y[i]) for i in range(3)]
    close(per_sample(build_loss("equalization", class_counts=COUNTS, threshold=0.05, gamma=0.0)), ce_vals)
    close(per_sample(build_loss("equalization", class_counts=COUNTS, threshold=0.0, gamma=1.0)), ce_vals)


def test_equalization_random_beta_lies_between_limits():
    torch.manual_seed(0)
    z = torch.randn(256, 3)
    y = torch.randint(0, 2, (256,))  # no tail-class samples: the tail term is droppable for all
    lo = build_loss("equalization", class_counts=COUNTS, threshold=0.05, gamma=1.0).per_sample(z, y)
    hi = build_loss("equalization", class_counts=COUNTS, threshold=0.05, gamma=0.0).per_sample(z, y)
    mid = build_loss("equalization", class_counts=COUNTS, threshold=0.05, gamma=0.5).per_sample(z, y)
    dropped = torch.isclose(mid, lo, atol=1e-6)
    kept = torch.isclose(mid, hi, atol=1e-6)
    assert bool((dropped | kept).all())
    assert 0.35 < float(dropped.float().mean()) < 0.65


# --------------------------------------------------------------------------------------- GHM-C


def ghm_expected(z, y, acc_before, seen_before, bins=30, mu=0.75, first=True):
    g = np.array([1.0 - np_softmax(z[i])[y[i]] for i in range(len(y))])
    idx = np.minimum(np.floor(g * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(float)
    acc = acc_before.copy()
    for b in range(bins):
        if counts[b] > 0:
            if first and not seen_before[b]:
                acc[b] = counts[b]
            else:
                acc[b] = mu * acc_before[b] + (1 - mu) * counts[b]
    n_valid = int((counts > 0).sum())
    w = np.array([len(y) / acc[idx[i]] / n_valid for i in range(len(y))])
    ce_vals = np.array([np_ce(z[i], y[i]) for i in range(len(y))])
    return w, ce_vals, acc, seen_before | (counts > 0), idx


def test_ghm_c_hand_values_momentum_and_gradient():
    z1 = np.array([[3.0, 0.0, 0.0], [3.1, 0.0, 0.0], [0.0, 0.5, 0.0]])
    y1 = np.array([0, 0, 2])
    w, ce_vals, acc, seen, idx = ghm_expected(z1, y1, np.zeros(30), np.zeros(30, bool))
    assert idx[0] == idx[1] != idx[2]  # two samples share a region: the example exercises density
    loss = build_loss("ghm_c")
    z = torch.tensor(z1, dtype=torch.float32, requires_grad=True)
    out = loss(z, torch.tensor(y1))
    close(w, [3 / (2 * 2), 3 / (2 * 2), 3 / (1 * 2)])  # weight = N / (count * valid regions)
    assert out.item() == pytest.approx(float(np.mean(w * ce_vals)), rel=1e-5)
    out.backward()
    p = np.array([np_softmax(r) for r in z1])
    grad = p.copy()
    grad[np.arange(3), y1] -= 1.0
    close(z.grad.numpy(), w[:, None] * grad / 3)
    close(loss.acc_sum.numpy(), acc)
    # a second batch: the regions seen before are averaged with momentum 0.75
    w2, ce2, acc2, _, _ = ghm_expected(Z, Y, acc, seen)
    out2 = loss(zt(), yt())
    assert out2.item() == pytest.approx(float(np.mean(w2 * ce2)), rel=1e-5)
    close(loss.acc_sum.numpy(), acc2)
    # mmdetection's start at zero: the first update gives (1 - momentum) * count
    mm = build_loss("ghm_c", ema_init="zero")
    mm(torch.tensor(z1, dtype=torch.float32), torch.tensor(y1))
    close(mm.acc_sum.numpy(), 0.25 * np.bincount(idx, minlength=30))
    # eval mode leaves the histogram alone
    loss.eval()
    loss(torch.tensor(z1, dtype=torch.float32), torch.tensor(y1))
    close(loss.acc_sum.numpy(), acc2)


def test_ghm_c_without_momentum_weights_average_one():
    torch.manual_seed(1)
    z, y = torch.randn(64, 5) * 3, torch.randint(0, 5, (64,))
    loss = build_loss("ghm_c", momentum=0.0)
    w = loss.sample_weights(z, y)
    assert float(w.mean()) == pytest.approx(1.0, rel=1e-5)


# --------------------------------------------------------------------------------------- label-aware smoothing


def test_label_aware_smoothing_factors_by_shape():
    counts = [100, 40, 10]  # x = 1, 1/3, 0
    h, t = 0.4, 0.1
    x = [1.0, 1 / 3, 0.0]
    shapes = {
        "concave": [t + (h - t) * math.sin(xi * math.pi / 2) for xi in x],
        "linear": [t + (h - t) * xi for xi in x],
        "convex": [h + (h - t) * math.sin(1.5 * math.pi + xi * math.pi / 2) for xi in x],
    }
    for shape, expected in shapes.items():
        eps = label_aware_smoothing_factors(counts, h, t, shape).numpy()
        close(eps, expected)
        assert eps[0] == pytest.approx(h) and eps[-1] == pytest.approx(t)
    close(label_aware_smoothing_factors(counts, h, t, "exp", power=2.0).numpy(),
          [t + (h - t) * xi ** 2 for xi in x])
    with pytest.raises(ConfigError):
        label_aware_smoothing_factors(counts, h, t, "exp")
    with pytest.raises(ConfigError):
        label_aware_smoothing_factors(counts, h, t, "cubic")


def test_label_aware_smoothing_loss_hand_values():
    loss = build_loss("label_aware_smoothing", class_counts=COUNTS)
    eps = loss.smoothing.numpy()
    expected = []
    for i in range(3):
        logp = np.log(np_softmax(Z[i]))
        e = eps[Y[i]]
        expected.append(-(1 - e) * logp[Y[i]] - e * logp.mean())  # e/C on every class, y included
    close(per_sample(loss), expected)
    # same smoothing for every class reduces to torch's uniform label smoothing
    same = build_loss("label_aware_smoothing", class_counts=COUNTS, smooth_head=0.2, smooth_tail=0.2)
    close(per_sample(same), per_sample(build_loss("ce", label_smoothing=0.2)))


# --------------------------------------------------------------------------------------- distillation


def test_distillation_hand_values_gradient_and_subset():
    T = 2.0
    teacher = np.array([[1.0, 0.0, -1.0], [0.2, 0.4, 3.0], [0.0, 0.0, 0.0]])
    expected = []
    for i in range(3):
        q = np_softmax(teacher[i] / T)
        p = np_softmax(Z[i] / T)
        expected.append(T * T * float((q * (np.log(q) - np.log(p))).sum()))
    kd = DistillationLoss(temperature=T)
    s = zt(requires_grad=True)
    t = torch.tensor(teacher, dtype=torch.float32, requires_grad=True)
    close(kd.per_sample(s, t).detach().numpy(), expected)
    out = kd(s, t)
    assert out.item() == pytest.approx(float(np.mean(expected)), rel=1e-5)
    out.backward()
    grad = np.array([T * (np_softmax(Z[i] / T) - np_softmax(teacher[i] / T)) for i in range(3)]) / 3
    close(s.grad.numpy(), grad)
    assert t.grad is None  # the teacher is detached
    assert float(kd(zt(), zt())) == pytest.approx(0.0, abs=1e-6)
    w = torch.tensor([0.0, 1.0, 1.0])
    assert float(kd(zt(), torch.tensor(teacher, dtype=torch.float32), sample_weight=w)) == pytest.approx(
        (expected[1] + expected[2]) / 3, rel=1e-5)
    sub = DistillationLoss(temperature=T, class_subset=[True, True, False])
    exp_sub = []
    for i in range(3):
        q = np_softmax(teacher[i, :2] / T)
        p = np_softmax(Z[i, :2] / T)
        exp_sub.append(T * T * float((q * (np.log(q) - np.log(p))).sum()))
    close(sub.per_sample(zt(), torch.tensor(teacher, dtype=torch.float32)).numpy(), exp_sub)


# --------------------------------------------------------------------------------------- CUDA graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_capture_in_a_cuda_graph():
    dev = torch.device("cuda")
    for name in BASELINE_NAMES:
        loss = build_loss(name, class_counts=COUNTS).to(dev)
        z = torch.randn(8, 3, device=dev, requires_grad=True)
        y = torch.randint(0, 3, (8,), device=dev)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                z.grad = None
                loss(z, y).backward()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        z.grad = None
        with torch.cuda.graph(g):
            out = loss(z, y)
            out.backward()
        before = loss.cum_counts.clone() if name == "seesaw" else None
        g.replay()
        torch.cuda.synchronize()
        assert torch.isfinite(out), name
        if before is not None:  # the in-place count update is part of the graph
            assert int((loss.cum_counts - before).sum()) == 8
        eager = build_loss(name, class_counts=COUNTS).to(dev)
        eager.load_state_dict(loss.state_dict())
        if name not in ("seesaw", "ghm_c", "equalization"):  # stateful / random: checked above
            assert out.item() == pytest.approx(float(eager(z.detach(), y)), rel=1e-4), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_run_under_bf16_autocast():
    dev = torch.device("cuda")
    lin = torch.nn.Linear(4, 3).to(dev)
    x = torch.randn(8, 4, device=dev)
    y = torch.randint(0, 3, (8,), device=dev)
    for name in BASELINE_NAMES:
        loss = build_loss(name, class_counts=COUNTS).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = lin(x)
            assert z.dtype == torch.bfloat16
            out = loss(z, y)
        assert out.dtype == torch.float32 and torch.isfinite(out), name
        out.backward()
