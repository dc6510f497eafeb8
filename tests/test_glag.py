"""GLAG (seed 001): GraLoss recipes, the AFG stage 2 (glag_afg), beta adaptation, KD on head classes."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import longtail.engine.runner as runner
from longtail.config import load_config
from longtail.data.dataset import ArraySplit, LongTailedDataset
from longtail.engine.device import Runtime
from longtail.engine.rng import RunRNG
from longtail.engine.stages import RunContext, stage_kind
from longtail.errors import ConfigError
from longtail.losses.ce import CrossEntropyLoss
from longtail.losses.gradual import gradual_alpha
from longtail.methods.glag import (
    AdaptiveFeatureGenerator,
    BetaAdapter,
    GLAGStage2Loss,
    glag_head_mask,
)
from longtail.features.statistics import inverse_tukey
from longtail.models.factory import build_model
from longtail.models.heads import LinearHead, LWSHead
from tests.conftest import config as shared_config
from tests.conftest import interrupt_at
from tests.conftest import tiny_dataset as shared_tiny_dataset

D64 = torch.float64


def tiny_dataset(_config=None, val=True) -> LongTailedDataset:
    """The shared tiny dataset, here with its validation split by default (GLAG adapts beta on it)."""
    return shared_tiny_dataset(_config, val=val)


def config(tmp_path, method="glag", *extra):
    """The shared short run, here 2 epochs of batch 32 without warm-up or periodic checkpoints."""
    return shared_config(tmp_path, method, "engine.checkpoint_every=0", "stages.0.epochs=2", "stages.0.batch_size=32",
                         "stages.0.schedule.warmup_epochs=0", *extra)


# ------------------------------------------------------------------ alpha(T)


def test_kd_alpha_follows_the_graloss_schedule_shapes():
    head = LinearHead(2, 3)
    values = {}
    for schedule in ("convex", "linear", "concave"):
        loss = GLAGStage2Loss(CrossEntropyLoss(), head, torch.tensor([True, False, False]))
        hook = BetaAdapter(torch.zeros(3), torch.tensor([False, True, True]), loss=loss,
                           kd_alpha={"s": 1.0, "c": 2.0, "schedule": schedule})
        values[schedule] = []
        for epoch in range(40):
            hook.on_epoch_start(epoch, 40)
            values[schedule].append(float(loss.alpha))
    for v in values.values():
        assert v[0] == 0.0 and all(b > a for a, b in zip(v, v[1:])) and v[-1] < 1.0
    # Eq. 3 at mid-training: convex sqrt(2) - 1 < linear 1/2 < concave 2 - sqrt(2)
    assert values["convex"][20] == pytest.approx(math.sqrt(2) - 1, abs=1e-6)
    assert values["linear"][20] == pytest.approx(0.5, abs=1e-6)
    assert values["concave"][20] == pytest.approx(2 - math.sqrt(2), abs=1e-6)
    # convex: increments grow (slow first, fast late); concave: they shrink
    dc = np.diff(values["convex"])
    dk = np.diff(values["concave"])
    assert (np.diff(dc) > 0).all() and (np.diff(dk) < 0).all()
    assert gradual_alpha(39, 40, s=0.5) == pytest.approx(0.5 * (2 ** (39 / 40) - 1))


def test_graloss_recipes_use_graloss_in_stage_one_only():
    for method, second in (("graloss", None), ("graloss_crt", "crt"), ("graloss_lws", "lws"), ("glag", "afg")):
        cfg = load_config(mapping={"method": method})
        assert cfg.stages[0].loss == {"name": "graloss", "s": 1.0, "c": 2.0, "schedule": "convex"}
        assert [s.name for s in cfg.stages[1:]] == ([second] if second else [])
    crt, graloss_crt = load_config(mapping={"method": "crt"}), load_config(mapping={"method": "graloss_crt"})
    # Table 6: only the stage-1 loss differs from cRT
    assert graloss_crt.stages[1] == crt.stages[1]
    assert graloss_crt.stages[0].optimizer == crt.stages[0].optimizer
    glag = load_config(mapping={"method": "glag"})
    assert glag.stages[0].optimizer.weight_decay == 5e-4 and glag.stages[0].schedule.name == "cosine"
    assert glag.stages[1].kind == "glag_afg" and glag.stages[1].head == "lws" and glag.stages[1].epochs == 40
    assert glag.data.val_per_class > 0
    assert load_config(mapping={"method": "glag_no_kd"}).stages[1].options["kd"] is False
    assert load_config(mapping={"method": "glag_no_ad"}).stages[1].options["adaptive_beta"] is False
    assert load_config(mapping={"method": "glag_ce_ad_kd"}).stages[0].loss["name"] == "ce"


# ------------------------------------------------------------------ the generator

# Tukey-space features (lambda = 0.5): raw features are their squares.
TUKEY = {
    0: [(0, 0), (2, 0), (0, 2), (2, 2)],  # mu (1, 1), Sigma diag(4/3, 4/3)
    1: [(4, 1), (6, 1), (5, 4)],          # mu (5, 2), Sigma diag(1, 3)
    2: [(1, 4), (3, 4)],                  # mu (2, 4), Sigma [[2, 0], [0, 0]]
}


def small_afg(num_head=1, target="max", gamma=0.1):
    x = torch.tensor([p for c in (0, 1, 2) for p in TUKEY[c]], dtype=torch.float32) ** 2
    y = torch.tensor([c for c in (0, 1, 2) for _ in TUKEY[c]])
    head = glag_head_mask([4, 3, 2], "count", num_head=num_head)
    return AdaptiveFeatureGenerator(x, y, 3, head, target=target, tukey_lambda=0.5, k=2, gamma=gamma), x, y


def test_min_items_fills_small_tail_classes_with_their_real_features():
    afg, x, y = small_afg(num_head=1)  # counts 4 / 3 / 2, target 4: classes 1 and 2 generate
    assert afg.tail_classes == [1, 2] and afg.num_generated == 1 + 2
    small = AdaptiveFeatureGenerator(x, y, 3, glag_head_mask([4, 3, 2], "count", num_head=1), target="max",
                                     tukey_lambda=0.5, k=2, gamma=0.1, min_items=3)
    assert small.tail_classes == [1] and small.num_generated == 1
    out = small.fill(torch.zeros(small.size, 2), torch.tensor([0.0, 0.6, 0.6]))
    real = {tuple(r) for r in x[y == 2].tolist()}
    assert all(tuple(r) in real for r in out[8:12].tolist())  # class 2's slots: its own features re-drawn


def test_calibrated_statistics_match_a_hand_computed_case():
    afg, _, _ = small_afg()
    torch.testing.assert_close(afg.stats.means, torch.tensor([[1.0, 1.0], [5.0, 2.0], [2.0, 4.0]]))
    torch.testing.assert_close(afg.stats.covariances()[0], torch.eye(2) * 4 / 3)
    torch.testing.assert_close(afg.stats.covariances()[1], torch.diag(torch.tensor([1.0, 3.0])))
    beta = torch.tensor([0.0, 0.5, 0.6])
    means, covs = afg.calibrate(beta)
    assert means.shape == (5, 2)  # tail rows: class 1 (3 rows), then class 2 (2 rows)
    # class-1 feature (4, 1): the only richer class is 0 -> mean 0.5 x + 0.5 mu0, cov 0.25 S1 + 0.25 S0 + 0.1 I
    torch.testing.assert_close(means[0], torch.tensor([2.5, 1.0]))
    torch.testing.assert_close(covs[0], torch.diag(torch.tensor([0.25 + 1 / 3 + 0.1, 0.75 + 1 / 3 + 0.1])))
    # class-2 feature (1, 4): support {0, 1}, d0 = 3, d1 = sqrt(20), w = (4/3, 3/sqrt(20)), beta 0.6
    w0, w1 = 4 / 3, 3 / math.sqrt(20)
    p0, p1 = w0 / (w0 + w1), w1 / (w0 + w1)
    mix_mean = (p0 * 1 + p1 * 5, p0 * 1 + p1 * 2)
    torch.testing.assert_close(means[3], torch.tensor([0.4 * 1 + 0.6 * mix_mean[0], 0.4 * 4 + 0.6 * mix_mean[1]]))
    expected = torch.tensor([[0.16 * 2 + 0.36 * (p0 * 4 / 3 + p1 * 1) + 0.1, 0.0],
                             [0.0, 0.36 * (p0 * 4 / 3 + p1 * 3) + 0.1]])
    torch.testing.assert_close(covs[3], expected)


def test_epoch_set_has_the_stated_class_counts():
    afg, x, y = small_afg()
    assert afg.target == 4 and afg.num_generated == 1 + 2
    out = afg.fill(torch.full((12, 2), -1.0), torch.tensor([0.0, 0.6, 0.6]))
    assert torch.bincount(afg.labels).tolist() == [4, 4, 4]
    assert [int(afg.is_generated[afg.labels == c].sum()) for c in range(3)] == [0, 1, 2]
    assert (out >= 0).all()  # every slot written; generated features mapped back (non-negative)
    for c in range(3):  # the real slots hold exactly the class's real features
        real = out[(afg.labels == c) & ~afg.is_generated]
        assert sorted(map(tuple, real.tolist())) == sorted(map(tuple, x[y == c].tolist()))
    # two head classes: class 1 is filled up with its own real features, only class 2 is generated
    afg2, x2, y2 = small_afg(num_head=2)
    out2 = afg2.fill(torch.zeros(12, 2), torch.tensor([0.0, 0.0, 0.6]))
    assert afg2.num_generated == 2
    own = {tuple(r) for r in x2[y2 == 1].tolist()}
    assert all(tuple(r) in own for r in out2[afg2.labels == 1].tolist())
    # an integer target subsamples larger classes and generates for the tail up to it
    afg3, _, _ = small_afg(target=3)
    assert afg3.size == 9 and afg3.num_generated == 1


def test_generated_features_have_the_calibrated_mean_and_covariance():
    afg, _, _ = small_afg(target=12000)  # class 1: 3 rows x 3999 samples; class 2: 2 rows x 5999
    beta = torch.tensor([0.0, 0.5, 0.6])
    means, covs = afg.calibrate(beta)
    samples, labels = afg.generate(beta, torch.Generator().manual_seed(0), inverse=False)
    assert samples.shape == (3 * 3999 + 2 * 5999, 2)
    assert torch.bincount(labels).tolist() == [0, 3 * 3999, 2 * 5999]
    rows = torch.repeat_interleave(torch.arange(5), torch.tensor([3999] * 3 + [5999] * 2))
    for r in range(5):
        s, m, c = samples[rows == r].double(), means[r].double(), covs[r].double()
        n = s.shape[0]
        assert ((s.mean(0) - m).abs() < 5 * (c.diagonal() / n).sqrt()).all()
        sd = ((c.diagonal().outer(c.diagonal()) + c**2) / n).sqrt()
        assert ((torch.cov(s.T) - c).abs() < 5 * sd).all()
    # the same draws, mapped back to the feature space: max(u, 0)^2
    back, _ = afg.generate(beta, torch.Generator().manual_seed(0))
    torch.testing.assert_close(back, inverse_tukey(samples, 0.5))
    torch.testing.assert_close(back, samples.clamp(min=0) ** 2)


def test_generation_is_exact_with_per_class_factors_in_higher_dimension():
    """D = 6: one head class with more features than dimensions (QR factor), the others with fewer
    (singular covariances, centred-feature factors); gamma = 0, so no term makes Sigma' regular.
    The draws have the dense calibrated mean and covariance of :meth:`calibrate` (no jitter)."""
    g = torch.Generator().manual_seed(0)
    sizes = [10, 5, 3, 4]
    x = torch.cat([torch.rand(n, 6, generator=g) * (1 + c) for c, n in enumerate(sizes)])
    y = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    afg = AdaptiveFeatureGenerator(x, y, 4, glag_head_mask(sizes, "count", num_head=2), target=24000, gamma=0.0)
    assert [tuple(f.shape) for f in afg.stats.factors] == [(6, 6), (5, 6), (3, 6), (4, 6)]
    beta = torch.tensor([0.0, 0.0, 0.6, 0.3])
    means, covs = afg.calibrate(beta)
    samples, labels = afg.generate(beta, torch.Generator().manual_seed(1), inverse=False)
    per_row = [7999] * 3 + [5999] * 4  # (24000 - n_c) / n_c draws for each real feature
    rows = torch.repeat_interleave(torch.arange(7), torch.tensor(per_row))
    assert samples.shape == (sum(per_row), 6) and torch.equal(labels, afg.tail_y[rows])
    for r in range(7):
        s, m, c = samples[rows == r].double(), means[r].double(), covs[r].double()
        n = s.shape[0]
        assert ((s.mean(0) - m).abs() < 5 * (c.diagonal() / n).sqrt()).all()
        sd = ((c.diagonal().outer(c.diagonal()) + c**2) / n).sqrt()
        assert ((torch.cov(s.T) - c).abs() < 5 * sd).all()


# ------------------------------------------------------------------ beta


def test_beta_moves_in_the_direction_the_rule_says():
    beta = torch.tensor([0.0, 0.6, 0.6, 0.6, 0.98])
    tail = torch.tensor([False, True, True, True, True])
    record = {}
    hook = BetaAdapter(beta, tail, prev_acc=torch.full((5,), 0.5), step=0.05, record=record)
    hook.update(torch.tensor([0.9, 0.7, 0.5, 0.3, 0.8]))
    # improved: +step; unchanged: same; worse: -step; head classes never move; capped at 1
    torch.testing.assert_close(beta, torch.tensor([0.0, 0.65, 0.6, 0.55, 1.0]))
    hook.update(torch.tensor([0.9, 0.6, 0.5, 0.3, 0.9]))  # compared with the previous epoch now
    torch.testing.assert_close(beta, torch.tensor([0.0, 0.6, 0.6, 0.55, 1.0]))
    assert record["beta_history"] == [[0.0, 0.6, 0.6, 0.6, 0.98], [0.0, 0.65, 0.6, 0.55, 1.0], [0.0, 0.6, 0.6, 0.55, 1.0]]
    assert len(record["tail_val_acc_history"]) == 2
    fixed = BetaAdapter(torch.tensor([0.0, 0.6]), torch.tensor([False, True]), adaptive=False,
                        prev_acc=torch.zeros(2))
    fixed.update(torch.ones(2))
    assert fixed.beta.tolist() == pytest.approx([0.0, 0.6])


def test_beta_hook_reads_the_validation_accuracy_of_the_head():
    base = LinearHead(2, 2)
    with torch.no_grad():
        base.fc.weight.copy_(torch.eye(2))
        base.fc.bias.copy_(torch.tensor([2.0, 0.0]))  # everything predicted as class 0
    head = LWSHead(base)
    feats = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    labels = torch.tensor([0] * 4 + [1] * 4)
    from longtail.eval.metrics import per_class_accuracy

    beta = torch.tensor([0.0, 0.6])
    hook = BetaAdapter(beta, torch.tensor([False, True]), head=head, val=(feats, labels),
                       prev_acc=per_class_accuracy(head, feats, labels, 2))
    with torch.no_grad():
        head.scale.copy_(torch.tensor([0.1, 1.0]))  # class 1 becomes right: its beta goes up
    hook.on_epoch_end()
    assert beta.tolist() == pytest.approx([0.0, 0.65])
    with torch.no_grad():
        head.scale.copy_(torch.tensor([1.0, 1.0]))  # and wrong again: down
    hook.on_epoch_end()
    assert beta.tolist() == pytest.approx([0.0, 0.6])


# ------------------------------------------------------------------ KD


def _kd(s, t, T):
    q = F.softmax(t / T, 1)
    return T * T * (q * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1)


def test_kd_applies_only_to_head_class_samples():
    torch.manual_seed(0)
    teacher = LinearHead(4, 3)
    student = LWSHead(teacher)
    with torch.no_grad():
        student.scale.copy_(torch.tensor([0.5, 2.0, 1.5]))
    head_mask = torch.tensor([True, False, False])
    loss = GLAGStage2Loss(CrossEntropyLoss(), teacher, head_mask, temperature=2.0)
    loss.set_alpha(0.7)
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 0, 2, 1])
    z = student(x)
    ce = F.cross_entropy(z, y)
    kd = _kd(z, teacher(x), 2.0)
    expected = ce + 0.7 * (kd * (y == 0).float()).sum() / 6
    torch.testing.assert_close(loss(z, y, x), expected)
    # a batch of tail-class samples only: the loss is plain CE (no KD, no gradient from it)
    yt = torch.tensor([1, 2, 1, 2, 1, 2])
    torch.testing.assert_close(loss(z, yt, x), F.cross_entropy(z, yt))
    assert float(kd.detach()[y == 0].min()) > 0  # the student differs from the teacher, so KD is active
    # kd_on="logits": every sample, distributions over the head-class logits only
    two_heads = torch.tensor([True, True, False])
    on_logits = GLAGStage2Loss(CrossEntropyLoss(), teacher, two_heads, kd_on="logits")
    on_logits.set_alpha(1.0)
    torch.testing.assert_close(on_logits(z, y, x), ce + _kd(z[:, :2], teacher(x)[:, :2], 2.0).mean())
    # without a teacher (options.kd=false): CE
    torch.testing.assert_close(GLAGStage2Loss(CrossEntropyLoss(), None, head_mask)(z, y, x), ce)


# ------------------------------------------------------------------ the stage


def _context(tmp_path, *extra):
    cfg = config(tmp_path, "glag", "stages.1.batch_size=32", *extra)
    dataset = tiny_dataset()
    runtime = Runtime.resolve(cfg.engine)
    torch.manual_seed(0)
    model = build_model("resnet20", 4, head="linear")
    splits = runner._to_device(dataset, runtime.device)
    return RunContext(cfg, runtime, dataset, model, splits, tmp_path, RunRNG(0, runtime.device)), cfg.stages[1]


def test_stage_builds_a_balanced_epoch_source_and_a_graph_safe_loss(tmp_path):
    ctx, stage = _context(tmp_path)
    kind = stage_kind("glag_afg")
    kind.prepare(ctx, stage)
    assert isinstance(ctx.model.head, LWSHead)
    plan = kind.build(ctx, stage)
    source = plan.members[0].source
    assert kind.record()["head_classes"] == [0, 1]  # 48 + 24 >= 60% of 90 images
    assert kind.record()["target_count"] == 48 and kind.record()["num_generated"] == 36 + 42
    assert torch.bincount(source.labels).tolist() == [48] * 4
    assert [int(source.afg.is_generated[source.labels == c].sum()) for c in range(4)] == [0, 0, 36, 42]
    assert source.steps_per_epoch == math.ceil(192 / 32)
    buffer = source.inputs
    plan.members[0].hooks[1].on_epoch_start(0, plan.epochs)
    source.start_epoch(0)
    assert source.inputs is buffer and torch.isfinite(buffer).all() and (buffer >= 0).all()
    first = buffer.clone()
    source.start_epoch(1)
    gen = source.afg.is_generated
    assert torch.equal(first[~gen & (source.labels == 0)], buffer[~gen & (source.labels == 0)])
    assert not torch.equal(first[gen], buffer[gen])  # fresh draws every epoch
    x, y = source.next()
    loss, logits = plan.members[0].compute_loss(x, y)
    assert logits.shape == (32, 4) and torch.isfinite(loss)
    assert [n for n, _ in plan.members[0].named_params] == ["scale"]
    assert kind.record()["beta_history"] == [[0.0, 0.0, 0.6, 0.6]]
    assert "beta_history" not in stage.options  # the config is not written


def test_stage_checks_its_options(tmp_path):
    kind = stage_kind("glag_afg")
    ctx, stage = _context(tmp_path, "stages.1.options.beta_stp=0.1")
    with pytest.raises(ConfigError, match="beta_step"):
        kind.prepare(ctx, stage)
    ctx, stage = _context(tmp_path, "stages.1.head=linear")
    with pytest.raises(ConfigError, match="head: lws"):
        kind.prepare(ctx, stage)
    ctx, stage = _context(tmp_path, "eval.select=best_val", "data.val_per_class=8")
    with pytest.raises(ConfigError, match="eval.select=last"):
        kind.prepare(ctx, stage)


@pytest.mark.parametrize("override, names", [
    ("beta_init=1.5", "beta_init"), ("k=0", "options.k"), ("gamma=-0.1", "options.gamma"),
    ("head_fraction=0", "head_fraction"), ("head_split=count", "num_head"), ("target=most", "options.target"),
    ("dispersion=diag", "options.dispersion"), ("own_covariance=pooled", "own_covariance"),
    ("kd_temperature=0", "kd_temperature"),
])
def test_stage_refuses_bad_option_values_before_training(tmp_path, override, names):
    """Every option value is checked by ``check`` (the runner's pre-flight, before stage 1 trains)."""
    ctx, stage = _context(tmp_path, f"stages.1.options.{override}")
    with pytest.raises(ConfigError, match=names):
        stage_kind("glag_afg").check(ctx, stage)


@pytest.fixture()
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


def test_glag_end_to_end_on_tiny_data(tmp_path, fake_data):
    cfg = config(tmp_path, "glag", "stages.1.epochs=3", "stages.1.batch_size=64")
    results = runner.run_config(cfg)
    run_dir = tmp_path / "glag" / "seed0"
    options = results["stage_records"][1]
    history = options["beta_history"]
    assert len(history) == 3 + 1 and all(len(b) == 4 for b in history)
    assert all(b[0] == 0.0 and b[1] == 0.0 for b in history)  # head classes have no beta
    steps = [round(v - 0.6, 6) / 0.05 for b in history for v in b[2:]]
    assert all(abs(s - round(s)) < 1e-6 for s in steps)  # tail betas move in steps of 0.05
    assert all(abs(b[c] - a[c]) <= 0.05 + 1e-6 for a, b in zip(history, history[1:]) for c in (2, 3))
    assert len(options["tail_val_acc_history"]) == 3
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["stage1"] * 2 + ["afg"] * 3
    before = torch.load(run_dir / "stage0_stage1.pt")["model"]
    after = torch.load(run_dir / "stage1_afg.pt")["model"]
    for key in before:  # encoder and stage-1 classifier (the KD teacher) are untouched
        if key.startswith("encoder."):
            torch.testing.assert_close(before[key], after[key], rtol=0, atol=0)
    torch.testing.assert_close(before["head.fc.weight"], after["head.base.fc.weight"], rtol=0, atol=0)
    assert not torch.equal(after["head.scale"], torch.ones(4))
    assert {"many", "medium", "few"} <= set(results["test"]) and "val" in results
    assert results["timings"][1]["steps_per_epoch"] == math.ceil(192 / 64)


def test_glag_without_a_validation_split_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", lambda _c=None: tiny_dataset(val=False))
    with pytest.raises(ConfigError, match="data.val_per_class"):
        runner.run_config(config(tmp_path, "glag", "stages.0.epochs=1"))
    # a fixed beta needs no validation split
    results = runner.run_config(config(tmp_path / "fixed", "glag_no_ad", "stages.0.epochs=1", "stages.1.epochs=1",
                                       "stages.1.batch_size=64"))
    assert results["stage_records"][1]["beta_history"] == [[0.0, 0.0, 0.6, 0.6]]


def test_glag_says_which_classes_the_validation_split_lacks(tmp_path, monkeypatch):
    def without_class_3(_c=None):
        ds = tiny_dataset()
        keep = ds.val.y != 3
        ds.val = ArraySplit(ds.val.x[keep], ds.val.y[keep])
        return ds

    monkeypatch.setattr(runner, "load_dataset", without_class_3)
    with pytest.warns(UserWarning, match=r"no items of 1 classes \[3\]; their beta cannot adapt"):
        results = runner.run_config(config(tmp_path, "glag", "stages.0.epochs=1", "stages.1.epochs=2",
                                           "stages.1.batch_size=64"))
    options = results["stage_records"][1]
    assert options["classes_without_val"] == [3]
    assert [b[3] for b in options["beta_history"]] == [0.6, 0.6, 0.6]  # class 3 is a tail class: beta stays


def test_resume_inside_stage_two_continues_beta_and_training_exactly(tmp_path, fake_data, monkeypatch):
    extra = ("stages.1.epochs=4", "stages.1.batch_size=64", "engine.checkpoint_every=1")
    whole = runner.run_config(config(tmp_path / "whole", "glag", *extra))
    interrupt_at(monkeypatch, 2, stage="afg")
    with pytest.raises(KeyboardInterrupt):
        runner.run_config(config(tmp_path / "split", "glag", *extra))
    resumed = runner.run_config(config(tmp_path / "split", "glag", *extra))
    assert resumed["stage_records"][1]["beta_history"] == whole["stage_records"][1]["beta_history"]
    a = torch.load(tmp_path / "whole" / "glag" / "seed0" / "stage1_afg.pt")["model"]["head.scale"]
    b = torch.load(tmp_path / "split" / "glag" / "seed0" / "stage1_afg.pt")["model"]["head.scale"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("override, names", [
    ("stages.1.mixing={name: mixup, alpha: 1.0}", "mixing"),
    ("stages.1.loss.label_smothing=0.1", "label_smoothing"),
])
def test_stage_refuses_unsupported_stage_settings_before_training(tmp_path, override, names):
    ctx, stage = _context(tmp_path, override)
    with pytest.raises(ConfigError, match=names):
        stage_kind("glag_afg").check(ctx, stage)
