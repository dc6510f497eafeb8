"""Faithfulness review of IWB (seed 000) and the weight-balancing baselines it builds on: the
papers' settings per data set, Eqs. (3)-(10) against element-wise references, and MaxNorm against
the weight-balancing code's projection."""
import math
from pathlib import Path

import pytest
import torch

import longtail.engine.runner as runner
from longtail.config import load_config, to_dict
from longtail.engine.maxnorm import MaxNorm
from longtail.losses.class_balanced import class_balanced_weights
from longtail.losses.iwb import InverseWeightBalancingLoss, iwb_divergence, norm_coefficient
from longtail.models.heads import LinearHead

from .conftest import tiny_dataset

REPO = Path(__file__).resolve().parents[1]
CIFAR100_LT_IF100 = [int(500 * 0.01 ** (c / 99)) for c in range(100)]  # conventions.md: 10,847 images


def _stage(stage):
    opt, sched = stage.optimizer, stage.schedule
    return (stage.epochs, stage.batch_size, opt.lr, opt.momentum, opt.weight_decay, sched.name, sched.final_lr,
            sched.warmup_epochs)


# ------------------------------------------------------------------------------ recipes and configs
def test_wd_recipe_is_the_weight_balancing_stage1():
    cfg = load_config(mapping={"method": "wd"})
    (s1,) = cfg.stages
    assert (cfg.model.encoder, cfg.model.head) == ("resnet32", "linear")
    assert _stage(s1) == (200, 64, 0.01, 0.9, 5e-3, "cosine", 0.0, 0)
    assert (s1.train, s1.loss, s1.augment, s1.sampler) == ("all", {"name": "ce"}, "crop_flip", {"name": "instance"})
    assert s1.optimizer.param_groups == {}, "weight decay on every parameter, as the weight-balancing code"


@pytest.mark.parametrize("method, loss", [
    ("wd_maxnorm", {"name": "ce"}), ("wd_maxnorm_cb", {"name": "cb_ce", "beta": 0.9999})])
def test_wd_maxnorm_stage2_is_the_weight_balancing_recipe(method, loss):
    cfg = load_config(mapping={"method": method})
    s1, s2 = cfg.stages
    assert to_dict(s1) == to_dict(load_config(mapping={"method": "wd"}).stages[0])
    # the weight-balancing code's second-stage demo: lr 0.01 (not IWB's 0.005), wd 0.1, 10 epochs, bs 64
    assert _stage(s2) == (10, 64, 0.01, 0.9, 0.1, "cosine", 0.0, 0)
    assert (s2.train, s2.head, s2.features, s2.loss) == ("head", None, "cached", loss)
    assert s2.max_norm == {"rule": "range", "ratio": 0.1}


@pytest.mark.parametrize("folder, stage1, stage2, lam", [
    # the paper's Implementation details, per data set: (bs, lr, wd) of stage 1, (bs, lr) of stage 2, lambda
    ("cifar100_lt", (64, 0.01, 5e-3), (64, 0.005), 0.15),
    ("imagenet_lt", (128, 0.01, 5e-4), (512, 0.01), 0.05),
    ("inat2018", (512, 0.02, 1e-4), (512, 0.0002), 0.01),
])
def test_iwb_configs_carry_the_papers_settings(folder, stage1, stage2, lam):
    cfg = load_config(REPO / "configs" / folder / "iwb.yaml")
    s1, s2 = cfg.stages
    bs, lr, wd = stage1
    assert _stage(s1) == (200, bs, lr, 0.9, wd, "cosine", 0.0, 0) and s1.loss == {"name": "ce"}
    bs, lr = stage2
    assert _stage(s2) == (10, bs, lr, 0.9, 0.0, "cosine", 0.0, 0)
    assert (s2.train, s2.head, s2.max_norm) == ("head", None, None), "the stage-1 classifier, frozen encoder"
    paper = {"name": "iwb", "lam": lam, "base": "cb_ce", "hc": "vector", "nc_only": False, "divergence": "kl",
             "log_base": 2, "kl_direction": "paper"}
    assert {k: s2.loss[k] for k in paper} == paper
    encoder = {"cifar100_lt": "resnet32", "imagenet_lt": "resnext50_32x4d", "inat2018": "resnet50"}[folder]
    assert cfg.model.encoder == encoder


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*/wd*.yaml")))
def test_wd_configs_load(path):
    cfg = load_config(REPO / path)
    assert cfg.method == Path(path).stem and cfg.name == f"{Path(path).parent.name}_{cfg.method}"
    lines = (REPO / path).read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1].startswith("# "), "a complete header comment"


# ------------------------------------------------------------------------------ Eqs. (3)-(10)
def test_nc_on_cifar100_lt_if100():
    """Eq. (3) with N = 10,847 (all training images) and n_c from 500 down to 5."""
    assert sum(CIFAR100_LT_IF100) == 10847 and CIFAR100_LT_IF100[-1] == 5
    nc = norm_coefficient(CIFAR100_LT_IF100)
    assert nc[0].item() == pytest.approx(math.log2(10847 / 501), abs=1e-5)  # 4.436
    assert nc[-1].item() == pytest.approx(math.log2(10847 / 6), abs=1e-5)  # 10.820
    assert bool((nc[1:] >= nc[:-1]).all()) and bool((nc > 0).all())


def _reference_target(lam, counts, weight, feats):
    """P_ic = lam * log2(N / (n_c + 1)) * (1 - W_c.x_i / (|W_c| |x_i|)) / 2, one entry at a time."""
    n = sum(counts)
    p = torch.empty(feats.shape[0], weight.shape[0], dtype=torch.float64)
    for i, x in enumerate(feats.double()):
        for c, w in enumerate(weight.double()):
            p[i, c] = lam * math.log2(n / (counts[c] + 1)) * (1 - (w @ x) / (w.norm() * x.norm())) / 2
    return p


def test_target_and_loss_against_an_elementwise_reference():
    """P per sample and class (Eqs. 5-7), KL(softmax|W| || softmax P_i) summed over classes (Eq. 8),
    added to the CB loss and averaged over the batch (Eq. 10, mean instead of sum)."""
    torch.manual_seed(0)
    counts = [30, 12, 5, 2]
    head = LinearHead(5, 4)
    feats, targets = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 2])
    loss = InverseWeightBalancingLoss(counts, head=head, lam=0.15)
    weight = head.fc.weight.detach()
    p_ref = _reference_target(0.15, counts, weight, feats)
    torch.testing.assert_close(loss.target(weight, feats, targets).double(), p_ref, rtol=1e-5, atol=1e-6)
    q = torch.softmax(weight.double().norm(dim=1), 0)
    kl = [sum(q[c] * (math.log(q[c]) - math.log(torch.softmax(p_ref[i], 0)[c])) for c in range(4)) for i in range(6)]
    logits = head(feats).detach()
    w = class_balanced_weights(counts).double()
    cb = [w[y] * -torch.log_softmax(logits.double()[i], 0)[y] for i, y in enumerate(targets.tolist())]
    expect = sum(a + b for a, b in zip(cb, kl)) / 6
    assert loss(logits, targets, features=feats).item() == pytest.approx(float(expect), abs=1e-5)


def test_norms_are_of_the_weight_rows_only():
    """|W| and HC use W alone (Eqs. 4-5, 8): the classifier bias changes neither."""
    torch.manual_seed(0)
    head = LinearHead(5, 4)
    feats, targets = torch.randn(6, 5), torch.zeros(6, dtype=torch.long)
    loss = InverseWeightBalancingLoss([30, 12, 5, 2], head=head, base=None)
    before = loss.regulariser(feats, targets)
    with torch.no_grad():
        head.fc.bias.fill_(10.0)
    torch.testing.assert_close(loss.regulariser(feats, targets), before, rtol=0, atol=0)


def test_kl_gradient_is_the_papers_direction():
    """d/d|W| of sum_c q_c log(q_c / p_c), q = softmax|W|: q * (log q - log p - KL); the reversed KL
    would give q - p instead."""
    norms = torch.tensor([2.0, 1.0, 0.5], requires_grad=True)
    target = torch.tensor([[0.1, 0.4, 0.9]])
    iwb_divergence(norms, target).sum().backward()
    q, log_p = torch.softmax(norms.detach(), 0), torch.log_softmax(target[0], 0)
    kl = (q * (q.log() - log_p)).sum()
    torch.testing.assert_close(norms.grad, q * (q.log() - log_p - kl))
    assert not torch.allclose(norms.grad, q - log_p.exp(), atol=1e-3)


# ------------------------------------------------------------------------------ MaxNorm
def _code_pgd(weight, thresh_ratio, initial):
    """MaxNorm_via_PGD of the weight-balancing code (tau = 1): setPerLayerThresh on ``initial``, then PGD."""
    norms0 = torch.linalg.norm(initial, ord=2, dim=1).unsqueeze(-1)
    thresh = norms0.min() + thresh_ratio * (norms0.max() - norms0.min())
    out = weight.clone()
    norms = torch.linalg.norm(out, ord=2, dim=1).unsqueeze(-1)
    idx = (norms > thresh).squeeze()
    out[idx] = out[idx] * (thresh / norms[idx].squeeze()).unsqueeze(-1)
    return out


def test_maxnorm_matches_the_weight_balancing_code():
    torch.manual_seed(0)
    initial = torch.randn(10, 16) * torch.linspace(3.0, 0.5, 10)[:, None]
    moved = initial + 0.3 * torch.randn(10, 16)
    cap = MaxNorm.from_initial_norms(initial)
    got = cap.apply_(moved.clone())
    torch.testing.assert_close(got, _code_pgd(moved, 0.1, initial))
    assert (got.norm(dim=1) < moved.norm(dim=1) - 1e-6).sum() >= 5, "the head rows are capped"


# ------------------------------------------------------------------------------ engine
def test_maxnorm_threshold_survives_a_resume_within_stage2(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)
    seen = []  # the threshold of every MaxNorm the stages build
    init = MaxNorm.__init__

    def spy(self, *args, **kw):
        init(self, *args, **kw)
        seen.append(self.threshold.clone())

    monkeypatch.setattr(MaxNorm, "__init__", spy)
    cfg = lambda: load_config(mapping={"method": "wd_maxnorm_cb", "name": "wd"}, overrides=[  # noqa: E731
        f"output_dir={tmp_path}", "engine.progress=false", "model.encoder=resnet20", "engine.checkpoint_every=2",
        "stages.0.epochs=2", "stages.0.batch_size=16", "stages.1.epochs=4", "stages.1.batch_size=16",
        "stages.1.optimizer.lr=0.5"])
    log = runner.RunFolder.log

    def interrupt(self, record):
        log(self, record)
        if record.get("stage") == "maxnorm_cb" and record.get("epoch") == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.RunFolder, "log", interrupt)
    with pytest.raises(KeyboardInterrupt):
        runner.run_config(cfg())
    monkeypatch.setattr(runner.RunFolder, "log", log)
    runner.run_config(cfg())  # resumes stage 2 at epoch 2
    assert len(seen) == 2
    torch.testing.assert_close(seen[1], seen[0])
