"""Stacked training (engine/stacked.py, models/stacked.py): K = 3 runs trained as one grouped
network give each member the weights and metrics of the run trained alone with the same seed.

Tolerance: on the CPU (deterministic kernels, one thread) a grouped convolution sums in another
order than K separate ones, so members differ from the solo runs by float rounding only:
weights and BatchNorm statistics within |a - b| <= ATOL + RTOL |a| with ATOL = RTOL = 1e-4 (after 2
epochs = 12 SGD steps at lr 0.1; the largest differences seen are ~2e-4 on running variances of ~50,
~5e-6 relative, and <= 3e-5 on weights), epoch losses within 1e-4 relative, and the same test predictions (top-1 and per-class accuracy equal)."""
import json

import pytest
import torch

import longtail.engine.runner as runner
from longtail.config import load_config
from longtail.engine.stacked import StackedRun, group_for_stacking, stack_refusal
from longtail.models.factory import ENCODERS
from longtail.models.stacked import stack_encoders

from .test_engine import tiny_dataset

ATOL = RTOL = 1e-4


@pytest.fixture(autouse=True)
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


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


def compare(tmp_path, members):
    """Train ``members`` ((method, seed, overrides) each) alone and stacked; check every run folder."""
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
                torch.testing.assert_close(wb[key].float(), wa[key].float(), atol=ATOL, rtol=RTOL, msg=f"{b_dir} {key}")
        assert b["test"]["top1"] == a["test"]["top1"]
        assert b["test"]["per_class_accuracy"] == a["test"]["per_class_accuracy"]
        la = [json.loads(line) for line in (a_dir / "metrics.jsonl").read_text().splitlines()]
        lb = [json.loads(line) for line in (b_dir / "metrics.jsonl").read_text().splitlines()]
        assert [(r["stage"], r["epoch"]) for r in la] == [(r["stage"], r["epoch"]) for r in lb]
        for ra, rb in zip(la, lb):
            assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
            assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=1e-9)
            assert rb["lr"] == pytest.approx(ra["lr"])
        for name in ("config.yaml", "env.json", "per_class_accuracy.png", "weight_norms.png"):
            assert (b_dir / name).is_file()
        assert b["stacked"]["members"] == len(members)
    return solo_results, stacked_results


def test_stacked_ce_seeds_equal_the_runs_trained_alone(tmp_path):
    compare(tmp_path, [("ce", 0, []), ("ce", 1, []), ("ce", 2, [])])


def test_stacked_methods_differing_in_loss_sampler_head_equal_the_runs_alone(tmp_path):
    # LDAM-DRW (cosine head, DRW switching on in epoch 2), class-balanced sampling, Seesaw (counts)
    compare(tmp_path, [
        ("ldam_drw", 0, ["stages.0.loss.start_epoch=1"]),
        ("ce_cbs", 1, []),
        ("seesaw", 2, []),
    ])


def test_stacked_stage2_on_cached_features_equals_the_runs_alone(tmp_path):
    compare(tmp_path, [("crt", s, ["stages.1.epochs=2", "stages.1.batch_size=32"]) for s in (0, 1, 2)])


def test_grouping_stacks_compatible_runs_and_says_why_the_rest_run_alone(tmp_path):
    configs = [config(tmp_path, "ce", 0), config(tmp_path, "seesaw", 0), config(tmp_path, "ce", 1),
               config(tmp_path, "ce", 2, "stages.0.epochs=3"), config(tmp_path, "ce", 3, "model.encoder=timm:resnet18")]
    stacks, alone = group_for_stacking(configs, 2)
    assert stacks == [[0, 1]]
    assert set(alone) == {2, 3, 4}
    assert "no compatible run" in alone[2] and "no compatible run" in alone[3]
    assert "not stackable" in alone[4]
    assert "kind 'glag" in stack_refusal(load_config(mapping={"method": "glag", "name": "glag"}))


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
