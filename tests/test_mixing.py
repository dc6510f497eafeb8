"""mixup and Remix: mixing algebra, Beta statistics, Remix's label rule by hand, mixed loss."""
import pytest
import torch
import torch.nn.functional as F

from longtail.data.mixing import MixedBatch, mixed_loss, mixup, remix, remix_label_weight
from longtail.losses.base import Loss


class CrossEntropy(Loss):
    def per_sample(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="none")


def check_mixing(batch: MixedBatch, x: torch.Tensor, lam_x: torch.Tensor):
    """With x = identity rows and y = arange, row i must be λ e_i + (1−λ) e_{y_b[i]}."""
    expected = lam_x[:, None] * x + (1 - lam_x[:, None]) * x[batch.y_b]
    torch.testing.assert_close(batch.x, expected)
    assert sorted(batch.y_b.tolist()) == list(range(len(x)))  # a permutation of the batch


def test_mixup_mixes_with_a_permutation_and_one_lambda_per_batch():
    x, y = torch.eye(16), torch.arange(16)
    batch = mixup(x, y, alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert batch.lam.shape == (16,) and torch.all(batch.lam == batch.lam[0])
    assert 0 <= batch.lam[0] <= 1 and torch.equal(batch.y_a, y)
    check_mixing(batch, x, batch.lam)
    per_sample = mixup(x, y, alpha=1.0, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert per_sample.lam.unique().numel() == 16
    check_mixing(per_sample, x, per_sample.lam)


@pytest.mark.parametrize("alpha", [1.0, 0.2, 4.0])
def test_beta_draws_have_beta_moments(alpha):
    x = torch.zeros(40_000, 1)
    lam = mixup(x, torch.zeros(40_000, dtype=torch.long), alpha, per_sample=True,
                generator=torch.Generator().manual_seed(1)).lam
    variance = 1 / (4 * (2 * alpha + 1))  # Beta(α, α)
    assert lam.min() >= 0 and lam.max() <= 1
    assert lam.mean().item() == pytest.approx(0.5, abs=4 * (variance / 40_000) ** 0.5)
    assert lam.var().item() == pytest.approx(variance, rel=0.03)


def test_mixing_is_deterministic_with_generator_and_checks_inputs():
    x, y = torch.randn(8, 3), torch.arange(8)
    a = mixup(x, y, generator=torch.Generator().manual_seed(2))
    b = mixup(x, y, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(TypeError, match="normalize"):
        mixup(torch.zeros(2, 3, dtype=torch.uint8), y[:2])
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mixup(x, y, alpha=0.0)
    with pytest.raises(ValueError, match="kappa"):
        remix(x, y, torch.ones(8), kappa=0.5)


@pytest.mark.parametrize(
    "lam_x, n_a, n_b, expected",
    [
        (0.4, 300, 100, 0.0),   # a is 3x more frequent and contributes < τ: label goes to b
        (0.5, 300, 100, 0.5),   # λ = τ is not < τ: plain mixup label
        (0.7, 300, 100, 0.7),   # majority image dominates: plain mixup label
        (0.6, 100, 300, 1.0),   # b is 3x more frequent and contributes 0.4 < τ: label goes to a
        (0.5, 100, 300, 0.5),   # 1 − λ = τ is not < τ
        (0.3, 100, 300, 0.3),
        (0.1, 200, 100, 0.1),   # ratio 2 < κ: plain mixup label
        (0.9, 100, 250, 0.9),   # ratio 1/2.5 > 1/κ
        (0.2, 50, 50, 0.2),
    ],
)
def test_remix_label_rule_by_hand(lam_x, n_a, n_b, expected):
    out = remix_label_weight(torch.tensor([lam_x]), torch.tensor([n_a]), torch.tensor([n_b]), kappa=3.0, tau=0.5)
    assert out.item() == pytest.approx(expected)


def test_remix_uses_class_counts_of_both_partners():
    counts = torch.tensor([1000, 300, 100, 10])
    x, y = torch.eye(64), torch.arange(64) % 4
    seen = set()
    for seed in range(20):
        batch = remix(x, y, counts, generator=torch.Generator().manual_seed(seed))
        partner = _partners(batch.x)
        assert torch.equal(batch.y_b, y[partner])
        i = int((partner != torch.arange(64)).nonzero()[0])
        lam_x = batch.x[i, i]  # the weight of each sample's own image (one λ per batch)
        torch.testing.assert_close(batch.x, lam_x * x + (1 - lam_x) * x[partner])
        expected = remix_label_weight(lam_x.expand(64), counts[batch.y_a], counts[batch.y_b])
        torch.testing.assert_close(batch.lam, expected)
        seen |= {round(v, 6) for v in batch.lam.tolist()} & {0.0, 1.0}
    assert seen == {0.0, 1.0}  # both rebalancing cases occurred


def _partners(mixed: torch.Tensor) -> torch.Tensor:
    """Partner of each row of a mixed identity matrix: its off-diagonal non-zero (or itself)."""
    off = mixed - torch.diag(torch.diagonal(mixed))
    return torch.where(off.amax(1) > 0, off.argmax(1), torch.arange(len(mixed)))


def test_mixed_loss_is_lambda_weighted_sum():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    batch = MixedBatch(torch.zeros(2, 1), torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([0.25, 1.0]))
    ce = F.cross_entropy(logits, torch.tensor([0, 1]), reduction="none")
    ce_b = F.cross_entropy(logits, torch.tensor([2, 0]), reduction="none")
    expected = (torch.tensor([0.25, 1.0]) * ce + torch.tensor([0.75, 0.0]) * ce_b).mean()
    torch.testing.assert_close(mixed_loss(CrossEntropy(), logits, batch), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture():
    device = torch.device("cuda")
    x = torch.randn(32, 3, 8, 8, device=device)
    y = torch.randint(0, 4, (32,), device=device)
    counts = torch.tensor([500, 100, 20, 5], device=device)
    logits = torch.randn(32, 4, device=device)

    def step():
        a = mixup(x, y, per_sample=True)
        b = remix(x, y, counts)
        return mixed_loss(CrossEntropy(), logits, a) + mixed_loss(CrossEntropy(), logits, b), a.lam

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, lam = step()
    graph.replay()
    first = lam.clone()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(loss) and not torch.equal(first, lam)
