"""Tests for the GHM-CWAP loss (losses/ghm_cwap.py) on tiny hand-computed examples."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.losses.base import LOSSES, build_loss
from longtail.losses.ghm_cwap import GHMCWAPLoss, ghm_cwap_variant


def logits_for(g, targets, num_classes):
    """Logits whose softmax gives p_y = 1 - g exactly (the rest spread evenly)."""
    g = torch.as_tensor(g, dtype=torch.float32)
    targets = torch.as_tensor(targets)
    z = torch.log(g / (num_classes - 1))[:, None].repeat(1, num_classes)
    z[torch.arange(len(targets)), targets] = torch.log(1 - g)
    return z


def value(loss, z, t):
    """Per-sample loss without counting into the histogram (evaluation under no_grad)."""
    with torch.no_grad():
        return loss.per_sample(z, t)


def feed(loss, g, targets, num_classes):
    """One training step's worth of counting (the loss value is not needed)."""
    z = logits_for(g, targets, num_classes).requires_grad_(True)
    loss(z, torch.as_tensor(targets))


def test_gradient_norm_is_one_minus_p_y_and_detached():
    loss = GHMCWAPLoss([10, 5, 1], histogram="epoch")
    z = torch.randn(6, 3, requires_grad=True)
    t = torch.tensor([0, 1, 2, 0, 1, 2])
    g = loss.gradient_norm(z, t)
    assert not g.requires_grad and g.grad_fn is None
    expected = 1 - torch.softmax(z.detach(), 1)[torch.arange(6), t]
    torch.testing.assert_close(g, expected)
    # the helper really produces the g it is asked for
    torch.testing.assert_close(
        loss.gradient_norm(logits_for([0.1, 0.7], [0, 2], 3), torch.tensor([0, 2])),
        torch.tensor([0.1, 0.7]),
    )


def test_adjusted_gradient_norm_uses_the_margins():
    loss = GHMCWAPLoss([100, 10], histogram="epoch", grad_norm="adjusted")
    z = torch.tensor([[1.0, 2.0], [0.5, -0.5]])
    t = torch.tensor([0, 1])
    m01 = 0.8 * 0.9 * math.log(0.1)  # warm-start margin, head sample -> tail logit
    p0 = math.exp(1.0) / (math.exp(1.0) + math.exp(2.0 + m01))
    p1 = math.exp(-0.5) / (math.exp(-0.5) + math.exp(0.5))
    torch.testing.assert_close(loss.gradient_norm(z, t), torch.tensor([1 - p0, 1 - p1]))


def test_intra_weights_by_hand_previous_epoch_and_detached_gradient():
    """N = 2 equal regions, alpha = 0.5, intra only.

    Epoch 0 counts: class 0 has 4 examples in region 0 and 1 in region 1; class 1 has one in
    region 0.  Then S_0 = 4^0.5 + 1^0.5 = 3, W_0 = [3/2, 3/1]; S_1 = 1, W_1 = [1/1, 1/max(0,1)]
    (the empty region counts as one example).
    """
    loss = GHMCWAPLoss([5, 1], histogram="epoch", num_regions=2, alpha=0.5, inter=False, regions="ura",
                       normalize_weights=False, intra_weight="printed")
    # epoch 0: warm start, W = S_c / (n_c/N)^a = N = 2 everywhere
    torch.testing.assert_close(loss.weight_table, torch.full((2, 2), 2.0))
    feed(loss, [0.1, 0.1, 0.1, 0.1, 0.9, 0.2], [0, 0, 0, 0, 0, 1], 2)
    torch.testing.assert_close(loss.hist_cur, torch.tensor([[4.0, 1.0], [1.0, 0.0]]))
    # the counts of the running epoch do not change the weights yet
    torch.testing.assert_close(loss.weight_table, torch.full((2, 2), 2.0))
    loss.on_epoch_end()
    torch.testing.assert_close(loss.hist_cur, torch.zeros(2, 2))
    torch.testing.assert_close(loss.effective_size, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(loss.weight_table, torch.tensor([[1.5, 3.0], [1.0, 1.0]]))

    g = [0.3, 0.8, 0.7]
    t = torch.tensor([0, 0, 1])
    z = logits_for(g, t, 2).requires_grad_(True)
    ce = F.cross_entropy(z.detach(), t, reduction="none")
    torch.testing.assert_close(loss.per_sample(z, t), torch.tensor([1.5, 3.0, 1.0]) * ce)

    batch = GHMCWAPLoss([5, 1], histogram="epoch", num_regions=2, alpha=0.5, inter=False, regions="ura", intra_weight="printed")
    batch.load_state_dict(loss.state_dict())
    w = torch.tensor([9 / 11, 18 / 11, 6 / 11])  # [1.5, 3, 1] / mean 11/6
    assert w.mean().item() == pytest.approx(1.0)
    z.grad = None
    batch(z, t).backward()
    # W is a detached constant: d/dz [W * CE] = W (softmax - onehot) / B
    expected = w[:, None] * (torch.softmax(z.detach(), 1) - F.one_hot(t, 2)) / 3
    torch.testing.assert_close(z.grad, expected)


def test_global_intra_weight_divides_by_one_size_for_every_class():
    """The "global" reading of Eq. (1): GHM's single normaliser, W = S / v^a, S = sum_c S_c.

    Same counts as the printed test above: S_0 = 3, S_1 = 1, S = 4, so W_0 = [4/2, 4/1] and
    W_1 = [4/1, 4/1]: class 1's lone example weighs as much as class 0's rarest one (printed:
    1 against 3, the tail class weighted down for being small)."""
    loss = GHMCWAPLoss([5, 1], histogram="epoch", num_regions=2, alpha=0.5, inter=False, regions="ura",
                       normalize_weights=False, intra_weight="global")
    S = 2 ** 0.5 * (5 ** 0.5 + 1)  # warm start: S_c = N^(1-a) n_c^a, W_c = S (N / n_c)^a
    torch.testing.assert_close(loss.weight_table, torch.tensor([[S * (2 / 5) ** 0.5] * 2, [S * 2 ** 0.5] * 2]))
    feed(loss, [0.1, 0.1, 0.1, 0.1, 0.9, 0.2], [0, 0, 0, 0, 0, 1], 2)
    loss.on_epoch_end()
    torch.testing.assert_close(loss.effective_size, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(loss.weight_table, torch.tensor([[2.0, 4.0], [4.0, 4.0]]))
    # inside a class the two readings agree; only the scale of each class differs
    printed = GHMCWAPLoss([5, 1], histogram="epoch", num_regions=2, alpha=0.5, inter=False, regions="ura", normalize_weights=False,
                          intra_weight="printed")
    printed.load_state_dict(loss.state_dict())
    printed._refresh_tables()
    ratio = loss.weight_table / printed.weight_table
    torch.testing.assert_close(ratio, torch.tensor([[4 / 3, 4 / 3], [4.0, 4.0]]))


def test_effective_size_counts_examples_under_aura():
    """Issue 17: S_c of Eq. (2) from the examples counted per region, not Algorithm 1's densities.

    N = 3. Class 0: 64 examples at g = 0.05 and 8 at 0.5 make AURA's next widths
    d = [1/log 64, 1/log 8, 1] / sum; the next epoch's 72 examples all land in the narrow first
    region, whose density value is 72 / (3 d_0) ~ 170. Class 1: 100 examples in an equal-width
    region (value 100), unseen in the second epoch. From counts S = (72^a, 100^a) and the margin
    falls on class 1's samples (the larger class); from densities the order is inverted."""
    a = 0.9
    sizes = {}
    for mode in ("counts", "values"):
        lf = GHMCWAPLoss([72, 100], histogram="epoch", num_regions=3, regions="aura", intra=False, effective_size=mode)
        feed(lf, [0.05] * 64 + [0.5] * 8 + [0.9] * 100, [0] * 72 + [1] * 100, 2)
        lf.on_epoch_end()
        feed(lf, [0.01] * 72, [0] * 72, 2)
        lf.on_epoch_end()
        sizes[mode] = lf
    d = torch.tensor([1 / math.log(64), 1 / math.log(8), 1.0])
    d0 = float(d[0] / d.sum())
    counts, values = sizes["counts"], sizes["values"]
    assert counts.effective_size_from == "counts" == GHMCWAPLoss([1], histogram="epoch").effective_size_from  # the default
    torch.testing.assert_close(counts.effective_size, torch.tensor([72 ** a, 100 ** a]))
    torch.testing.assert_close(values.effective_size, torch.tensor([(72 / (3 * d0)) ** a, 100 ** a]))
    torch.testing.assert_close(counts.margin[1, 0], torch.tensor(0.8 * a * math.log(72 / 100)))
    assert counts.margin[0, 1] == 0
    assert values.margin[0, 1] < 0 and values.margin[1, 0] == 0  # densities: class 0 looks larger


def test_margins_follow_eq2_signs():
    """M_{m,n} = gamma log min(1, S_n/S_m): row m = the sample's class, column n = the logit.

    Head-class sample (m = 0) on a tail logit (n = 2): S_n < S_m, margin < 0 (the paper: the
    influence of head classes on tail classes is reduced). Tail sample on a head logit: 0.
    """
    loss = GHMCWAPLoss([1000, 100, 10], histogram="epoch", intra=False)
    m = loss.margin
    a, gm = 0.9, 0.8  # warm start: S_c proportional to n_c^alpha
    expected = torch.tensor([
        [0.0, gm * a * math.log(0.1), gm * a * math.log(0.01)],
        [0.0, 0.0, gm * a * math.log(0.1)],
        [0.0, 0.0, 0.0],
    ])
    torch.testing.assert_close(m, expected)
    assert (m[0, 1:] < 0).all() and m[1, 2] < 0  # head sample, tail logits: negative
    assert (m[1:, 0] == 0).all() and m[2, 1] == 0  # tail sample, head logits: zero
    assert (m.diagonal() == 0).all()

    # effect on the gradient: a head sample pushes a tail logit down less than CE does
    z = torch.zeros(1, 3, requires_grad=True)
    loss(z, torch.tensor([0])).backward()
    z_ce = torch.zeros(1, 3, requires_grad=True)
    F.cross_entropy(z_ce, torch.tensor([0])).backward()
    assert z.grad[0, 2] < z_ce.grad[0, 2]
    # per-sample value by hand: -log(e^0 / (e^0 + e^{M01} + e^{M02}))
    val = loss.per_sample(torch.zeros(1, 3), torch.tensor([0]))
    hand = math.log(1 + math.exp(expected[0, 1].item()) + math.exp(expected[0, 2].item()))
    assert val.item() == pytest.approx(hand, rel=1e-6)


@pytest.mark.parametrize("regions", ["ura", "aura"])
def test_one_region_alpha_one_reduces_to_seesaw_mitigation(regions):
    """One region (N = 1) and alpha = 1.

    With N = 1 every example of class c lands in the single region, whose width is 1 under
    URA and AURA alike (widths are normalised to sum to 1), so each adds 1/(N d) = 1 and
    v_c = k_c, the number of class-c examples counted. Then S_c = v_c^1 = k_c and
    W_c = S_c / v_c = 1: the intra-category part is plain cross-entropy.  The margins are
    M_{m,n} = gamma log min(1, k_n/k_m), so

        L = -log( e^{z_m} / sum_n min(1, k_n/k_m)^gamma e^{z_n} ),

    which is Seesaw loss with only its mitigation factor (exponent p = gamma), i.e. the
    logit-adjusted loss -log softmax(z + gamma log pi)_m with its pairwise ratios pi_n/pi_m
    clipped at 1: exactly logit adjustment (tau = gamma) for a sample of the most frequent
    class, and plain CE when all counts are equal.  With the uniform warm start k_c = n_c.
    """
    gm = 0.8
    counts = [9, 3, 1]
    loss = GHMCWAPLoss(counts, histogram="epoch", num_regions=1, alpha=1.0, gamma=gm, regions=regions,
                       normalize_weights=False, intra_weight="printed")

    def reference(z, t, k):
        k = torch.tensor(k, dtype=torch.float32)
        ratio = (k[None, :] / k[t][:, None]).clamp(max=1.0)
        return F.cross_entropy(z + gm * torch.log(ratio), t, reduction="none")

    torch.manual_seed(0)
    z = torch.randn(5, 3)
    t = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(loss.weight_table, torch.ones(3, 1))
    torch.testing.assert_close(value(loss, z, t), reference(z, t, counts))
    # most frequent class: logit adjustment with tau = gamma, log prior log(n_c/sum n)
    prior = torch.log(torch.tensor(counts, dtype=torch.float32) / sum(counts))
    la = F.cross_entropy(z[t == 0] + gm * prior, t[t == 0], reduction="none")
    torch.testing.assert_close(value(loss, z[t == 0], t[t == 0]), la)

    # after an epoch the counted examples play the role of the class counts: here 2, 2, 2
    feed(loss, [0.3, 0.6, 0.2, 0.9, 0.5, 0.5], [0, 0, 1, 1, 2, 2], 3)
    loss.on_epoch_end()
    torch.testing.assert_close(loss.effective_size, torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(value(loss, z, t), F.cross_entropy(z, t, reduction="none"))
    feed(loss, [0.3, 0.6, 0.2, 0.5], [0, 0, 0, 2], 3)  # k = 3, 0 (kept: 2), 1
    loss.on_epoch_end()
    torch.testing.assert_close(value(loss, z, t), reference(z, t, [3, 2, 1]))
    # the global reading divides by one size for all classes: W_c = sum_k k_k / k_c, inverse frequency
    default = GHMCWAPLoss(counts, histogram="epoch", num_regions=1, alpha=1.0, gamma=gm, regions=regions,
                          normalize_weights=False, intra_weight="global")
    torch.testing.assert_close(default.weight_table, (13.0 / torch.tensor(counts, dtype=torch.float32))[:, None])


def test_warm_start_uniform_and_ce():
    """Uniform warm start: v_{c,i} = n_c/N, so W = N for everyone and S_c = N^{1-a} n_c^a."""
    N, a, gm = 30, 0.9, 0.8
    loss = GHMCWAPLoss([100, 10], histogram="epoch", normalize_weights=False, intra_weight="printed")
    torch.testing.assert_close(loss.hist, torch.tensor([[100 / N] * N, [10 / N] * N]))
    torch.testing.assert_close(loss.weight_table, torch.full((2, N), float(N)), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        loss.effective_size, torch.tensor([N ** (1 - a) * 100**a, N ** (1 - a) * 10**a])
    )
    z = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    t = torch.tensor([0, 1])
    m01 = gm * a * math.log(0.1)
    hand0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(2 + m01)))
    hand1 = -math.log(math.exp(2) / (math.exp(1) + math.exp(2)))
    torch.testing.assert_close(value(loss, z, t), N * torch.tensor([hand0, hand1]))
    normalised = GHMCWAPLoss([100, 10], histogram="epoch", intra_weight="printed")  # batch normalisation: mean weight 1
    torch.testing.assert_close(value(normalised, z, t), torch.tensor([hand0, hand1]))

    ce = GHMCWAPLoss([100, 10], histogram="epoch", warm_start="ce", normalize_weights=False)
    torch.testing.assert_close(value(ce, z, t), F.cross_entropy(z, t, reduction="none"))
    # after the first epoch the counted histogram takes over; epoch 0 resets it again
    feed(ce, [0.1, 0.1, 0.5], [0, 0, 1], 2)
    ce.on_epoch_end()
    assert ce.margin[0, 1] == pytest.approx(gm * math.log(1 / 2 ** 0.9))
    ce.on_epoch_start(0, 10)
    assert (ce.margin == 0).all() and (ce.hist_cur == 0).all()


def test_aura_narrows_dense_regions_by_algorithm_1():
    """N = 3, one class: 64 examples in region 0, 8 in region 1, none in region 2.

    d_i <- 1/log(max(v_i, e)) = [1/log 64, 1/log 8, 1], normalised to sum 1: the dense region
    becomes the narrowest, the empty one the widest.
    """
    loss = GHMCWAPLoss([72], histogram="epoch", num_regions=3, regions="aura", normalize_weights="batch")
    feed(loss, [0.05] * 64 + [0.5] * 8, [0] * 72, 2)
    loss.on_epoch_end()
    d = torch.tensor([1 / math.log(64), 1 / math.log(8), 1.0])
    d = d / d.sum()
    widths = loss.edges_cur[0, 1:] - loss.edges_cur[0, :-1]
    torch.testing.assert_close(widths, d)
    assert widths[0] < widths[1] < widths[2]
    assert loss.edges_cur[0, 0] == 0 and loss.edges_cur[0, -1] == 1
    # the histogram just counted keeps the boundaries it was counted with
    torch.testing.assert_close(loss.edges[0], torch.tensor([0, 1 / 3, 2 / 3, 1]))

    # next epoch: each example is counted in its region under the new boundaries
    g = 0.2  # new region 1 (d_0 ~ 0.14), but region 0 of the previous (equal) boundaries
    assert d[0] < g < d[0] + d[1]
    z = logits_for([g], [0], 2)
    val = loss.per_sample(z, torch.tensor([0]))
    torch.testing.assert_close(loss.hist_cur[0], torch.tensor([0.0, 1.0, 0.0]))
    assert val.item() == pytest.approx(F.cross_entropy(z, torch.tensor([0])).item(), rel=1e-5)
    # previous-epoch lookup: W for the g = 0.2 sample is S / 64^a (region 0), not S / 8^a
    wt = GHMCWAPLoss([72], histogram="epoch", num_regions=3, normalize_weights=False, inter=False,
                     intra_weight="global")
    wt.load_state_dict(loss.state_dict())
    wt._refresh_tables()
    s = 64**0.9 + 8**0.9
    assert wt.per_sample(z, torch.tensor([0])).item() == pytest.approx(
        s / 64**0.9 * F.cross_entropy(z, torch.tensor([0])).item(), rel=1e-5
    )


def test_aura_guard_for_values_at_most_e_and_ura_fixed():
    """Values 2, 1, 0 are all <= e: 1/log(v) would be 1.44, inf, -0; the guard gives 1 each."""
    loss = GHMCWAPLoss([3], histogram="epoch", num_regions=3, regions="aura")
    feed(loss, [0.1, 0.1, 0.5], [0, 0, 0], 2)
    loss.on_epoch_end()
    torch.testing.assert_close(loss.edges_cur[0], torch.tensor([0, 1 / 3, 2 / 3, 1]))
    assert torch.isfinite(loss.weight_table).all() and torch.isfinite(loss.margin).all()

    ura = GHMCWAPLoss([72], histogram="epoch", num_regions=3, regions="ura")
    feed(ura, [0.05] * 64 + [0.5] * 8, [0] * 72, 2)
    ura.on_epoch_end()
    torch.testing.assert_close(ura.edges_cur[0], torch.tensor([0, 1 / 3, 2 / 3, 1]))


def test_roll_is_idempotent_and_unseen_classes_keep_their_histogram():
    loss = GHMCWAPLoss([4, 4, 4], histogram="epoch", num_regions=2)
    feed(loss, [0.1, 0.9, 0.2], [0, 0, 1], 3)
    loss.on_epoch_end()
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.on_epoch_start(1, 10)  # engine calls both hooks: the second roll is a no-op
    for k, v in loss.state_dict().items():
        torch.testing.assert_close(v, state[k], msg=k)
    # class 2 saw nothing: it keeps the warm-start histogram 4/2 per region
    torch.testing.assert_close(loss.hist[2], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(loss.hist[:2], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    # on_epoch_start alone (no on_epoch_end) also rolls
    feed(loss, [0.1, 0.1], [1, 1], 3)
    loss.on_epoch_start(2, 10)
    assert loss.hist_cur.sum() == 0
    torch.testing.assert_close(loss.hist[1], torch.tensor([2.0, 0.0]))


def test_no_counting_in_eval_or_no_grad():
    loss = GHMCWAPLoss([4, 4], histogram="epoch", num_regions=2)
    z = logits_for([0.1, 0.6], [0, 1], 2)
    t = torch.tensor([0, 1])
    with torch.no_grad():
        loss(z, t)
    loss.eval()
    loss(z, t)
    assert loss.hist_cur.sum() == 0
    loss.train()
    loss(z, t)
    torch.testing.assert_close(loss.hist_cur, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_graph_safe_no_host_sync():
    """Fake tensors raise on .item(), bool(), nonzero and data-dependent shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    loss = GHMCWAPLoss([50, 10, 2], histogram="epoch", num_regions=5)
    mode = FakeTensorMode()
    for name, buf in list(loss._buffers.items()):
        loss._buffers[name] = mode.from_tensor(buf)
    with mode:
        z = torch.randn(8, 3, requires_grad=True)
        t = torch.randint(0, 3, (8,))
        out = loss(z, t)
        out.backward()
        loss.on_epoch_end()
    assert out.shape == ()


def test_variants_and_registry():
    assert ghm_cwap_variant("R") == dict(intra=True, inter=False, regions="ura")
    assert ghm_cwap_variant("A^URA") == dict(intra=False, inter=True, regions="ura")
    assert ghm_cwap_variant("R+A^URA") == dict(intra=True, inter=True, regions="ura")
    assert ghm_cwap_variant("r + a_{aura}") == dict(intra=True, inter=True, regions="aura")
    with pytest.raises(KeyError, match="did you mean"):
        ghm_cwap_variant("R+A^AUR")
    assert LOSSES.get("ghm_cwap") is GHMCWAPLoss
    full = build_loss("ghm_cwap", class_counts=[5, 1])
    assert (full.num_regions, full.alpha, full.gamma) == (30, 0.9, 0.8)
    assert (full.intra, full.inter, full.regions) == (True, True, "aura")
    r_only = build_loss("ghm_cwap", class_counts=[5, 1], **ghm_cwap_variant("R"))
    assert (r_only.margin == 0).all()
    a_only = build_loss("ghm_cwap", class_counts=[5, 1], **ghm_cwap_variant("A^URA"))
    z = torch.randn(4, 2)
    t = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(
        a_only.per_sample(z, t),
        F.cross_entropy(z + a_only.margin[t], t, reduction="none"),
    )
    for bad in (dict(regions="adaptive"), dict(num_regions=0), dict(aura_floor=1.0),
                dict(normalize_weights="mean"), dict(warm_start="zeros"), dict(intra_weight="class"),
                dict(effective_size="density")):
        with pytest.raises(ValueError):
            GHMCWAPLoss([5, 1], histogram="epoch", **bad)


def test_region_lookup_boundaries():
    """Right-closed lookup: g on a boundary goes up, g = 0 to the first, g = 1 to the last."""
    loss = GHMCWAPLoss([3], histogram="epoch", num_regions=2, regions="ura")
    z = torch.tensor([[0.0, 0.0], [100.0, -100.0], [-100.0, 100.0]])  # g = 0.5, 0, 1
    t = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(value(loss, z, t), F.cross_entropy(z, t, reduction="none"))
    torch.testing.assert_close(loss.gradient_norm(z, t), torch.tensor([0.5, 0.0, 1.0]))
    loss(z.requires_grad_(True), t)
    torch.testing.assert_close(loss.hist_cur, torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize("recipe, row", [
    ("ghm_cwap", "R+A^AURA"), ("ghm_cwap_r", "R"), ("ghm_cwap_a_ura", "A^URA"), ("ghm_cwap_r_a_ura", "R+A^URA"),
])
def test_table3_recipes_build_the_rows_of_ghm_cwap_variant(recipe, row):
    """The recipes and :func:`ghm_cwap_variant` are two spellings of Table 3: the built losses agree."""
    from longtail.config import load_config
    from longtail.losses import build_loss, ghm_cwap_variant

    spec = dict(load_config(mapping={"method": recipe}).stages[0].loss)
    spec.pop("name")
    from_recipe = build_loss("ghm_cwap", class_counts=[50, 20, 5], **spec)
    from_row = build_loss("ghm_cwap", class_counts=[50, 20, 5], **ghm_cwap_variant(row))
    for attr in ("intra", "inter", "regions", "alpha", "gamma", "num_regions", "warm_start", "normalize_weights"):
        assert getattr(from_recipe, attr) == getattr(from_row, attr), attr


# ---------------------------------------------------------------- issue 24: R inside each category


def _three_class_epoch(loss, seed=0):
    """One epoch's worth of counting: 300 / 60 / 12 examples with mostly-easy gradient norms."""
    torch.manual_seed(seed)
    for c, n in enumerate((300, 60, 12)):
        g = torch.distributions.Beta(0.5, 3.0).sample((n,)).clamp(1e-4, 1 - 1e-4)
        feed(loss, g, [c] * n, 3)


@pytest.mark.parametrize("regions", ["ura", "aura"])
@pytest.mark.parametrize("histogram", ["window", "epoch"])
def test_category_weights_leave_every_class_total_unchanged(regions, histogram):
    """R harmonises inside a class: over the histogram in use, sum_i k_{c,i} W_{c,i} = sum_i k_{c,i}."""
    loss = GHMCWAPLoss([300, 60, 12], regions=regions, histogram=histogram, inter=False)
    for epoch in range(3):
        _three_class_epoch(loss, seed=epoch)
        loss.on_epoch_end()
        k = loss.hist
        torch.testing.assert_close((k * loss.weight_table).sum(1), k.sum(1))
        assert loss.weight_table.std() > 0.1  # it does re-weight inside the classes


def test_category_weights_are_ghm_c_per_category_for_alpha_one():
    """URA, alpha = 1: W_{c,i} = tot_c / (n_valid,c * k_{c,i}) (Li et al.'s beta, per category).

    Class 0: k = [3, 1] -> tot 4, 2 valid regions: W = [4/6, 4/2]; class 1: k = [2, 2] -> W = [1, 1]."""
    loss = GHMCWAPLoss([4, 4], num_regions=2, alpha=1.0, inter=False, regions="ura", histogram="epoch")
    feed(loss, [0.1, 0.1, 0.1, 0.9, 0.2, 0.2, 0.7, 0.7], [0, 0, 0, 0, 1, 1, 1, 1], 2)
    loss.on_epoch_end()
    torch.testing.assert_close(loss.weight_table, torch.tensor([[2 / 3, 2.0], [1.0, 1.0]]))
    # the weights of the same examples in a batch: each class sums to its count
    z = logits_for([0.1, 0.1, 0.1, 0.9, 0.2, 0.2, 0.7, 0.7], [0, 0, 0, 0, 1, 1, 1, 1], 2)
    t = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    per = value(loss, z, t) / F.cross_entropy(z, t, reduction="none")
    torch.testing.assert_close(per, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0, 1.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("regions", ["ura", "aura"])
def test_one_region_reduces_r_to_one(regions):
    loss = GHMCWAPLoss([300, 60, 12], num_regions=1, regions=regions, inter=False)
    _three_class_epoch(loss)
    loss.on_epoch_end()
    torch.testing.assert_close(loss.weight_table, torch.ones(3, 1))


def test_weights_are_bounded_by_the_class_size_and_the_cap():
    """Class mean 1 bounds a weight by tot_c / k_min (one example); max_weight caps it lower and
    keeps the class mean at 1."""
    free = GHMCWAPLoss([300, 60, 12], regions="ura", inter=False, histogram="epoch")
    capped = GHMCWAPLoss([300, 60, 12], regions="ura", inter=False, histogram="epoch", max_weight=5.0)
    for loss in (free, capped):
        _three_class_epoch(loss)
        loss.on_epoch_end()
    k = free.hist
    assert (free.weight_table <= k.sum(1, keepdim=True)).all()
    assert free.weight_table.max() > 5.0  # the cap below really acts
    assert capped.weight_table.max() <= 5.0 * 1.5  # clipped, then the class renormalised once
    torch.testing.assert_close((k * capped.weight_table).sum(1), k.sum(1))


def test_window_histogram_is_a_moving_average_over_the_steps():
    """GHM-C's moving average per category: before a batch with b_c class-c examples the class's
    histogram decays by 1 - b_c / n_c, then the batch is counted; the weights follow at once."""
    loss = GHMCWAPLoss([4, 2], num_regions=2, regions="ura", inter=False, alpha=1.0)
    torch.testing.assert_close(loss.hist, torch.tensor([[2.0, 2.0], [1.0, 1.0]]))  # warm start n_c / N
    feed(loss, [0.1, 0.1, 0.9], [0, 0, 1], 2)  # b = (2, 1): decay 1/2 and 1/2
    torch.testing.assert_close(loss.hist, torch.tensor([[1.0 + 2.0, 1.0], [0.5, 0.5 + 1.0]]))
    # weights from the window in use now: class 0 k = [3, 1] -> 4 / (2 k) = [2/3, 2]
    torch.testing.assert_close(loss.weight_table[0], torch.tensor([2 / 3, 2.0]))
    feed(loss, [0.9, 0.9, 0.9, 0.9], [0, 0, 0, 0], 2)  # b_0 = 4 = n_0: the window is this batch alone
    torch.testing.assert_close(loss.hist[0], torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(loss.hist[1], torch.tensor([0.5, 1.5]))  # class 1 not drawn: kept
    loss.on_epoch_end()  # URA: the window carries over unchanged, the epoch counts reset
    torch.testing.assert_close(loss.hist[0], torch.tensor([0.0, 4.0]))
    assert loss.hist_cur.sum() == 0


def test_rebin_keeps_mass_with_uniform_density_inside_regions():
    from longtail.losses.ghm_cwap import rebin

    old = torch.tensor([[0.0, 1 / 3, 2 / 3, 1.0]])
    new = torch.tensor([[0.0, 0.1, 0.5, 1.0]])
    moved = rebin(torch.tensor([[3.0, 0.0, 3.0]]), old, new)
    torch.testing.assert_close(moved, torch.tensor([[0.9, 2.1, 3.0]]))
    torch.testing.assert_close(rebin(moved, new, new), moved)


def test_class_normalisation_in_the_batch_keeps_every_class_total_and_bounds_the_weights():
    """normalize_weights="class": each class's weights in the batch average 1, so a class's total
    weight is its count in the batch, a lone example weighs 1 and no weight exceeds b_c."""
    loss = GHMCWAPLoss([300, 60, 12], inter=False, normalize_weights="class")
    _three_class_epoch(loss)
    loss.on_epoch_end()
    g = torch.tensor([0.01, 0.02, 0.5, 0.95, 0.3, 0.6, 0.9])
    t = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    z = logits_for(g, t, 3)
    w = value(loss, z, t) / F.cross_entropy(z, t, reduction="none")
    for c, b in ((0, 4), (1, 2), (2, 1)):
        assert w[t == c].sum().item() == pytest.approx(b, rel=1e-5)
        assert (w[t == c] <= b).all()
    assert w[t == 0].std() > 0.1  # inside the class the hard and easy examples still differ
    assert w[-1].item() == pytest.approx(1.0)


def test_decayed_window_remnants_keep_the_weights_finite():
    """A region whose mass has decayed to a remnant (down to float32 denormals) is valued as one
    example: without the guard v^-alpha overflows and the class's weights become inf / nan."""
    loss = GHMCWAPLoss([4], num_regions=3, regions="ura", inter=False)
    feed(loss, [0.5, 0.9], [0, 0], 2)
    for _ in range(1000):  # b = 1 of n = 4: the other regions decay by 3/4 a step, into the denormals
        feed(loss, [0.1], [0], 2)
        if loss.hist[0, 2] < 1e-43:
            break
    assert 0 < loss.hist[0, 2] < 1e-43  # v^-0.9 of this overflows float32
    assert torch.isfinite(loss.weight_table).all()
    assert loss.weight_table.max() <= loss.hist.sum()  # at most the class's whole window


def test_weights_of_a_set_of_samples_have_mean_one_in_every_class():
    """``weights_of``: the samples given are every class's histogram, so under the category
    reading each class's weights average 1 over its own samples (R moves weight inside a class)."""
    torch.manual_seed(0)
    counts = [40, 20, 10, 5]
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    logits = torch.randn(len(targets), 4) * 3
    loss = GHMCWAPLoss(counts, regions="ura", inter=False)
    weights = loss.weights_of(logits, targets)
    for c in range(4):
        assert weights[targets == c].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert weights.std() > 0.1  # not all ones: the regions differ in density
