"""Stacked training (engine/stacked.py, models/stacked.py): K = 3 runs trained as one grouped
network give each member the weights and metrics of the run trained alone with the same seed.

Tolerance. In float64 (``exact``: default dtype float64, inputs normalised to float64) the CPU
kernels of a grouped convolution and of K separate ones give the same bits here, so members equal
the solo runs exactly (tolerance 0: weights, BatchNorm statistics, epoch losses, test metrics).
In float32 a grouped convolution may sum in another order: members then differ by float rounding,
weights and BatchNorm statistics within |a - b| <= ATOL + RTOL |a|, ATOL = RTOL = 1e-4 (after 2
epochs = 12 SGD steps at lr 0.1; seen: <= 3e-5 on weights, ~2e-4 on running variances of ~50), epoch
losses within 1e-4 relative, the same test predictions. That bound holds while no ReLU input lies
within rounding of 0: one that does can flip (seen with mixup in float32: a pre-activation of
3e-7 solo, -2e-7 stacked, at step 5), after which the runs differ as two solo runs on different
kernels would; hence the float64 tests, where rounding is 1e-16.
GHM-C, RandAugment and feature extraction (stage 2's cached features) compute in float32 whatever
the default dtype, so those are tested in float32."""
import functools
import json

import pytest
import torch

import longtail.engine.evaluate as evaluate
import longtail.engine.runner as runner
import longtail.engine.sources as sources
from longtail.config import load_config
from longtail.data.gpu_augment import Normalize
from longtail.engine.stacked import StackedRun, group_for_stacking, stack_refusal
from longtail.models.factory import ENCODERS
from longtail.errors import ConfigError
from longtail.models.stacked import StackedEncoder, stack_encoders

from .conftest import interrupt_at, tiny_dataset

ATOL = RTOL = 1e-4


@pytest.fixture(autouse=True)
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


@pytest.fixture
def float64(monkeypatch):
    """Models, inputs and features in float64 (the default dtype restored afterwards)."""
    monkeypatch.setattr(sources, "Normalize", functools.partial(Normalize, dtype=torch.float64))
    monkeypatch.setattr(evaluate, "Normalize", functools.partial(Normalize, dtype=torch.float64))
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def config(out, method, seed, *extra):
    return load_config(
        mapping={"method": method, "name": method},
        overrides=[
            f"output_dir={out}", f"seed={seed}", "engine.progress=false", "engine.device=cpu", "stages.0.epochs=2",
            "stages.0.batch_size=16", "stages.0.schedule.milestones=[]", "stages.0.schedule.warmup_epochs=1",
            "engine.checkpoint_every=0", "model.encoder=resnet8", *extra,
        ],
    )


def run_dir(out, cfg):
    return out / cfg.name / f"seed{cfg.seed}"


def compare(tmp_path, members, exact: bool):
    """Train ``members`` ((method, seed, overrides) each) alone and stacked; check every run folder
    (``exact``: bit for bit, else within the float32 tolerance above)."""
    atol, rtol, loss_rel = (0.0, 0.0, 0.0) if exact else (ATOL, RTOL, 1e-4)
    solo = [config(tmp_path / "solo", m, s, *o) for m, s, o in members]
    stacked = [config(tmp_path / "stacked", m, s, *o) for m, s, o in members]
    solo_results = [runner.run_config(c) for c in solo]
    stacked_results = StackedRun(stacked).execute()
    for a_cfg, b_cfg, a, b in zip(solo, stacked, solo_results, stacked_results):
        a_dir, b_dir = run_dir(tmp_path / "solo", a_cfg), run_dir(tmp_path / "stacked", b_cfg)
        for index, stage in enumerate(a_cfg.stages):
            wa = torch.load(a_dir / f"stage{index}_{stage.name}.pt")["model"]
            wb = torch.load(b_dir / f"stage{index}_{stage.name}.pt")["model"]
            assert wa.keys() == wb.keys()
            for key in wa:
                assert wb[key].dtype == wa[key].dtype
                torch.testing.assert_close(wb[key], wa[key], atol=atol, rtol=rtol, msg=f"{b_dir} {key}")
        assert b["test"]["top1"] == a["test"]["top1"]
        assert b["test"]["per_class_accuracy"] == a["test"]["per_class_accuracy"]
        la = [json.loads(line) for line in (a_dir / "metrics.jsonl").read_text().splitlines()]
        lb = [json.loads(line) for line in (b_dir / "metrics.jsonl").read_text().splitlines()]
        assert [(r["stage"], r["epoch"]) for r in la] == [(r["stage"], r["epoch"]) for r in lb]
        for ra, rb in zip(la, lb):
            assert rb["loss"] == pytest.approx(ra["loss"], rel=loss_rel, abs=0)
            assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=1e-9)
            assert rb["lr"] == pytest.approx(ra["lr"])
            assert rb.get("test_top1") == ra.get("test_top1") and rb.get("val_top1") == ra.get("val_top1")
        for name in ("config.yaml", "env.json", "per_class_accuracy.png", "weight_norms.png"):
            assert (b_dir / name).is_file()
        assert b["stacked"]["members"] == len(members)
    return solo_results, stacked_results


def test_stacked_ce_seeds_equal_the_runs_trained_alone(tmp_path, float64):
    compare(tmp_path, [("ce", 0, []), ("ce", 1, []), ("ce", 2, [])], exact=True)


def test_stacked_methods_differing_in_loss_sampler_head_equal_the_runs_alone(tmp_path, float64):
    # LDAM-DRW (cosine head, DRW switching on in epoch 2), class-balanced sampling, Seesaw (counts)
    compare(tmp_path, [
        ("ldam_drw", 0, ["stages.0.loss.start_epoch=1"]),
        ("ce_cbs", 1, []),
        ("seesaw", 2, []),
    ], exact=True)


def test_stacked_mixing_equals_the_runs_alone(tmp_path, float64):
    # mixup and Remix draws (Beta, permutation) beside plain CE; the test set evaluated after every
    # epoch (the members' encoders synced from the stack)
    compare(tmp_path, [(m, s, ["eval.every=1"]) for m, s in (("mixup", 0), ("remix", 1), ("ce", 2))], exact=True)


def test_stacked_float32_randaugment_and_ghm_equal_the_runs_alone_within_rounding(tmp_path):
    # float32 (as trained): RandAugment draws, GHM-C's gradient-norm statistics
    compare(tmp_path, [("ce", 0, []), ("ce_randaugment", 1, []), ("ghm_c", 2, [])], exact=False)


def test_stacked_stage2_on_cached_features_equals_the_runs_alone(tmp_path, monkeypatch):
    # float32 (feature extraction computes in float32). cRT: stage 1 stacked, then each member's new linear head (initialised from its own random
    # stream) trained on its own cached features, all in one step; checkpoint selection on validation
    # Float32 rounding of the grouped convolution stays within the tolerance only on a calm trajectory:
    # stage 2 at a tenth of cRT's lr (at 0.2 its loss climbs past 50), and seeds other than 1: with
    # seed 1's stream the stacked stage 1 differs from the solo one by 6e-5 (relative) in the first
    # epoch's loss (seeds 0, 2: 1e-7) and 0.04 in a BatchNorm running variance after two epochs, while
    # in float64 it equals its run alone bit for bit (test_stacked_ce_seeds_equal_the_runs_trained_alone).
    monkeypatch.setattr(runner, "load_dataset", lambda config: tiny_dataset(config, val=True))
    compare(tmp_path, [("crt", s, ["stages.1.epochs=2", "stages.1.batch_size=32", "stages.1.optimizer.lr=0.02",
                                   "eval.select=best_val", "data.val_per_class=8"]) for s in (0, 2, 3)], exact=False)


def test_grouping_stacks_compatible_runs_and_says_why_the_rest_run_alone(tmp_path):
    configs = [config(tmp_path, "ce", 0), config(tmp_path, "seesaw", 0), config(tmp_path, "ce", 1),
               config(tmp_path, "ce", 2, "stages.0.epochs=3"), config(tmp_path, "ce", 3, "model.encoder=timm:resnet18")]
    stacks, alone = group_for_stacking(configs, 2)
    assert stacks == [[0, 1]]
    assert set(alone) == {2, 3, 4}
    assert "no compatible run" in alone[2] and "no compatible run" in alone[3]
    assert "not stackable" in alone[4]
    assert "kind 'glag" in stack_refusal(load_config(mapping={"method": "glag", "name": "glag"}))


@pytest.mark.parametrize("dataset", ["text", "features", "newsgroups"])
def test_feature_datasets_run_alone_with_the_reason(tmp_path, dataset):
    """Feature vectors train an identity encoder whatever model.encoder says: refused by structure
    (the config's dataset kind, and at set-up an encoder without weights), never a bare StopIteration."""
    from longtail.models.factory import build_model
    from longtail.models.stacked import stack_refusal as encoder_refusal

    configs = [config(tmp_path, "ce", s, f"data.dataset={dataset}") for s in (0, 1)]
    stacks, alone = group_for_stacking(configs, 2)
    assert stacks == [] and all("feature vectors" in alone[i] for i in (0, 1))
    identity = build_model("identity", num_classes=3, in_dim=4).encoder
    assert "no weights" in encoder_refusal(identity)
    with pytest.raises(ConfigError, match="no weights"):
        StackedEncoder([identity, identity])


def test_stacked_encoder_is_k_independent_encoders():
    """Grouped convolutions: member k's features are its own encoder's (eval and train mode), and
    the gradient of the summed losses reaches each member's channel block only."""
    for name, shape in (("resnet8", (4, 3, 8, 8)), ("resnet10", (4, 3, 32, 32))):
        members = []
        for seed in range(3):
            torch.manual_seed(seed)
            members.append(ENCODERS.get(name)())
        stacked = stack_encoders(members)
        xs = [torch.randn(*shape) for _ in members]
        for train in (False, True):
            stacked.train(train)
            for m in members:
                m.train(train)
            feats = stacked(torch.cat(xs, 1))
            for k, m in enumerate(members):
                torch.testing.assert_close(feats[k], m(xs[k]), atol=1e-4, rtol=1e-4)
        stacked.zero_grad()
        stacked(torch.cat(xs, 1))[1].sum().backward()
        weight = stacked.net.conv1.weight.grad.chunk(3, 0)
        assert weight[0].abs().sum() == 0 and weight[2].abs().sum() == 0 and weight[1].abs().sum() > 0


def test_reproduce_stack_trains_compatible_runs_together_and_the_rest_alone(tmp_path, monkeypatch, capsys):
    """``longtail bench reproduce SPEC --stack 2``: seeds 0 and 1 of ce (the shared stage 1) and of
    crt (its stage 2) train in stacks of two, seed 2 alone (no partner left); the cells equal those
    of the matrix run without stacking."""
    import yaml

    from longtail.bench import reproduce

    monkeypatch.chdir(tmp_path)
    for method in ("ce", "crt"):
        (tmp_path / f"{method}.yaml").write_text(f"method: {method}\n")
    spec = {"name": "tiny", "dataset": "cifar10-lt", "data": {100: {"imbalance_factor": 100}}, "seeds": [0, 1, 2],
            "methods": {"ce": "ce.yaml", "crt": {"config": "crt.yaml", "overrides": ["stages.1.epochs=2"]}},
            "overrides": ["stages.0.epochs=2", "stages.0.batch_size=16", "stages.0.schedule.milestones=[]",
                          "model.encoder=resnet8", "engine.checkpoint_every=0", "engine.device=cpu"]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert reproduce.main(["spec.yaml", "--runs", "solo", "--results", "solo_out"]) == 0
    capsys.readouterr()
    assert reproduce.main(["spec.yaml", "--runs", "stacked", "--results", "out", "--stack", "2"]) == 0
    printed = capsys.readouterr().out
    assert "stack: ce IF 100 seed 0, ce IF 100 seed 1" in printed and "stack: crt IF 100 seed 0, crt IF 100 seed 1" in printed
    assert "alone: ce IF 100 seed 2 (no compatible run" in printed
    solo = {c["method"]: c for c in json.loads((tmp_path / "solo_out" / "tiny.json").read_text())["cells"]}
    stacked = {c["method"]: c for c in json.loads((tmp_path / "out" / "tiny.json").read_text())["cells"]}
    for method in ("ce", "crt"):
        assert stacked[method]["top1"] == solo[method]["top1"]
    crt0 = json.loads((tmp_path / stacked["crt"]["run_dirs"][0] / "results.json").read_text())
    assert crt0["stacked"]["members"] == 2 and crt0["timings"][0]["init_from"].endswith("ce/seed0/stage0_stage1.pt")
    assert "stacked" not in json.loads((tmp_path / stacked["crt"]["run_dirs"][2] / "results.json").read_text())


def test_speed_bench_stacked_variant_wiring_on_cpu(tmp_path, monkeypatch):
    """``longtail bench speed --variants fast stacked2`` with a stand-in for CUDA: the stacked
    variant times 2 stacked seeds, one run alone and 2 runs at once, and prints the comparison."""
    import functools
    import types

    from longtail.bench import conventional, speed
    from longtail.config import load_config as real_load_config

    fake_cuda = types.SimpleNamespace(is_available=lambda: True, reset_peak_memory_stats=lambda: None,
                                      max_memory_allocated=lambda: 0, get_device_name=lambda *a: "cpu stand-in")

    class FakeTorch:
        cuda = fake_cuda

        def __getattr__(self, name):
            return getattr(torch, name)

    cpu = ["engine.device=cpu", "model.encoder=resnet8", "stages.0.batch_size=16"]
    monkeypatch.setattr(speed, "torch", FakeTorch())
    monkeypatch.setattr(speed, "load_dataset", tiny_dataset)
    monkeypatch.setattr(speed, "run_conventional", functools.partial(conventional.run_conventional, device="cpu", workers=0,
                                                                     batch_size=16))
    monkeypatch.setattr(speed, "load_config", lambda mapping=None, overrides=(): real_load_config(
        mapping=mapping, overrides=[*overrides, *cpu]))
    output = tmp_path / "speed.json"
    assert speed.main(["--prepared", "unused.ltd", "--epochs", "1", "--conventional-epochs", "1", "--eager-epochs", "1",
                       "--variants", "fast", "stacked2", "--output", str(output)]) == 0
    stacked = json.loads(output.read_text())["stacked2"]
    assert stacked["k"] == 2 and stacked["stacked_stage1_seconds_excluding_capture"] > 0
    assert len(stacked["streams_stage1_seconds"]) == 2 and len(stacked["test_top1"]["stacked"]) == 2
    # seed 0 stacked equals seed 0 alone (same data, CPU)
    assert stacked["test_top1"]["stacked"][0] == stacked["test_top1"]["single"]
    with pytest.raises(SystemExit):
        speed.main(["--variants", "stacked1"])


def test_an_interrupted_stack_resumes_as_single_runs_that_equal_the_runs_alone(tmp_path, monkeypatch, float64):
    """Each member's periodic checkpoint holds its own weights, optimizer state (in the solo run's
    layout), loss state (DRW, Seesaw counts), divergence level and random stream: after a crash in
    epoch 3 every member resumes alone and ends bit for bit where the run alone ends."""

    members = [("ce", 0, []), ("ldam_drw", 1, ["stages.0.loss.start_epoch=2"]), ("seesaw", 2, [])]
    extra = ["stages.0.epochs=3", "engine.checkpoint_every=1"]
    solo = [runner.run_config(config(tmp_path / "solo", m, s, *o, *extra)) for m, s, o in members]
    configs = [config(tmp_path / "stacked", m, s, *o, *extra) for m, s, o in members]
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        StackedRun(configs).execute()
    for cfg in configs:
        assert torch.load(run_dir(tmp_path / "stacked", cfg) / "checkpoint.pt")["epoch"] == 2
    stack = StackedRun([config(tmp_path / "stacked", m, s, *o, *extra) for m, s, o in members])
    resumed = stack.execute()
    assert all("alone" in reason for reason in stack.alone.values()) and len(stack.alone) == 3
    for (m, s, _), a, b in zip(members, solo, resumed):
        assert b["resumed_from"] == {"stage": 0, "epoch": 2}
        assert b["test"]["per_class_accuracy"] == a["test"]["per_class_accuracy"]
        wa = torch.load(tmp_path / "solo" / m / f"seed{s}" / "stage0_stage1.pt")["model"]
        wb = torch.load(tmp_path / "stacked" / m / f"seed{s}" / "stage0_stage1.pt")["model"]
        for key in wa:
            torch.testing.assert_close(wb[key], wa[key], atol=0, rtol=0, msg=f"{m} {key}")
        la = [json.loads(x)["loss"] for x in (tmp_path / "solo" / m / f"seed{s}" / "metrics.jsonl").read_text().splitlines()]
        lb = [json.loads(x)["loss"] for x in (tmp_path / "stacked" / m / f"seed{s}" / "metrics.jsonl").read_text().splitlines()]
        assert la == lb
