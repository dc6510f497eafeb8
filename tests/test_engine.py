"""The engine end to end on a tiny synthetic dataset: run folder, resume, NaN handling, stage 2."""
import json
import time

import pytest
import torch

import longtail.engine.runner as runner
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.trainer import Trainer
from longtail.errors import TrainingError
from longtail.losses.ce import CrossEntropyLoss

from .conftest import config, interrupt_at, tiny_dataset


@pytest.fixture(autouse=True)
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


def test_run_writes_a_complete_run_folder(tmp_path):
    results = runner.run_config(config(tmp_path))
    run_dir = tmp_path / "ce" / "seed0"
    for name in ("config.yaml", "env.json", "metrics.jsonl", "checkpoint.pt", "results.json", "stage0_stage1.pt",
                 "per_class_accuracy.png", "weight_norms.png"):
        assert (run_dir / name).is_file(), name
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert results["test"]["group_sizes"] == {"many": 0, "medium": 2, "few": 2}
    assert len(results["weight_norms"]) == 4 and results["selection"].startswith("the model after the last epoch")
    env = json.loads((run_dir / "env.json").read_text())
    assert {"torch", "commit", "command", "runtime"} <= set(env)
    # a finished run is not trained again: the same results come back
    assert runner.run_config(config(tmp_path))["test"] == results["test"]


def test_resume_after_an_interruption_gives_the_same_model(tmp_path, monkeypatch):
    whole = runner.run_config(config(tmp_path / "whole"))
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        runner.run_config(config(tmp_path / "split"))
    checkpoint = load_checkpoint(tmp_path / "split" / "ce" / "seed0" / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["elapsed_seconds"] > 0
    started = time.perf_counter()
    resumed = runner.run_config(config(tmp_path / "split"))
    this_process = time.perf_counter() - started
    # the run's time counts the interrupted process's work up to its checkpoint
    assert resumed["resumed_from"] == {"stage": 0, "epoch": 2}
    assert resumed["seconds"] >= checkpoint["elapsed_seconds"] and resumed["seconds"] - checkpoint["elapsed_seconds"] <= this_process
    assert "resumed_from" not in whole
    a = torch.load(tmp_path / "whole" / "ce" / "seed0" / "stage0_stage1.pt")["model"]
    b = torch.load(tmp_path / "split" / "ce" / "seed0" / "stage0_stage1.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed["test"]["top1"] == whole["test"]["top1"]


class NaNFromEpochThree(CrossEntropyLoss):
    def __init__(self):
        super().__init__()
        self.register_buffer("poison", torch.zeros(()))

    def on_epoch_start(self, epoch, total_epochs):
        self.poison.fill_(float("nan") if epoch >= 2 else 0.0)

    def per_sample(self, logits, targets):
        return super().per_sample(logits, targets) + self.poison


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, register_loss):
    register_loss("test_nan_from_epoch_3", NaNFromEpochThree)
    cfg = config(tmp_path, "ce", "stages.0.loss={name: test_nan_from_epoch_3}")
    with pytest.raises(TrainingError, match="epoch 3: the training loss is not finite.*checkpoint"):
        runner.run_config(cfg)
    saved = load_checkpoint(tmp_path / "ce" / "seed0" / "checkpoint.pt")
    assert saved["epoch"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("method", ["crt", "lws", "wd_maxnorm_cb"])
def test_classifier_stages_leave_the_encoder_untouched(tmp_path, method):
    cfg = config(tmp_path, method, "stages.1.epochs=3", "stages.1.batch_size=32")
    runner.run_config(cfg)
    run_dir = tmp_path / method / "seed0"
    before = torch.load(run_dir / "stage0_stage1.pt")["model"]
    after = torch.load(run_dir / f"stage1_{cfg.stages[1].name}.pt")["model"]
    encoder_keys = [k for k in before if k.startswith("encoder.")]
    assert encoder_keys
    for key in encoder_keys:
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0, msg=key)
    head_changed = any(not torch.equal(before[k], after.get(k, before[k])) for k in before if k.startswith("head."))
    assert head_changed or method == "lws"  # LWS learns new scales on the frozen head


def test_maxnorm_stage_caps_every_class_norm(tmp_path):
    results = runner.run_config(config(tmp_path, "wd_maxnorm_cb", "stages.1.epochs=3"))
    before = torch.load(tmp_path / "wd_maxnorm_cb" / "seed0" / "stage0_stage1.pt")["model"]["head.fc.weight"]
    norms = before.norm(dim=1)
    cap = norms.min() + 0.1 * (norms.max() - norms.min())  # the weight-balancing code's threshold rule
    assert max(results["weight_norms"]) <= float(cap) + 1e-5


def test_posthoc_and_ncm_stages_need_no_training(tmp_path):
    for method in ("ncm", "tau_norm", "posthoc_la"):
        results = runner.run_config(config(tmp_path, method))
        assert [t["stage"] for t in results["timings"]] == ["stage1", method]


def test_iteration_based_stage_runs_exactly_that_many_steps(tmp_path, monkeypatch):
    steps = []
    original = Trainer._eager_step

    def counting(self):
        steps.append(1)
        return original(self)

    monkeypatch.setattr(Trainer, "_eager_step", counting)
    # 90 images, batch 16 -> 6 steps per epoch; 20 iterations -> 4 epochs, the last with 2 steps
    results = runner.run_config(config(tmp_path, "ce", "stages.0.iterations=20", "stages.0.schedule.warmup_epochs=0"))
    assert len(steps) == 20
    epochs = [json.loads(line) for line in (tmp_path / "ce" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 4 and results["timings"][0]["steps_per_epoch"] == 6


def test_compiled_encoder_trains_like_the_plain_one_and_reports_compile_time(tmp_path, monkeypatch):
    """engine.compile wraps the trained encoder in torch.compile; its first step (compilation) is
    timed apart. Inductor's code generation takes minutes on a 2-core CPU, so the test compiles
    through AOTAutograd without code generation: the wiring and the numerics, not the kernels."""
    compiled = []
    real_compile = torch.compile

    def compile_without_codegen(module, **options):
        compiled.append(module)
        return real_compile(module, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", compile_without_codegen)
    plain = runner.run_config(config(tmp_path / "plain", "ce", "stages.0.epochs=1"))
    fast = runner.run_config(config(tmp_path / "compiled", "ce", "stages.0.epochs=1", "engine.compile=on"))
    assert len(compiled) == 1 and compiled[0] is not None
    assert fast["timings"][0]["compile_seconds"] > 0 and plain["timings"][0]["compile_seconds"] == 0
    plain_loss = json.loads((tmp_path / "plain" / "ce" / "seed0" / "metrics.jsonl").read_text())["loss"]
    fast_loss = json.loads((tmp_path / "compiled" / "ce" / "seed0" / "metrics.jsonl").read_text())["loss"]
    assert fast_loss == pytest.approx(plain_loss, rel=1e-4)


@pytest.mark.parametrize("shift_bn", [True, False])
def test_mislas_stage2_trains_classifier_and_scale_and_shifts_bn_only_when_asked(tmp_path, shift_bn):
    # small stage-2 learning rates: after 4 tiny stage-1 epochs the BN running statistics (used when the
    # encoder is frozen in eval mode) are far from converged and the features are large
    cfg = config(tmp_path, "mislas", "stages.1.epochs=2", "stages.1.batch_size=16", f"stages.1.shift_bn={shift_bn}",
                 "stages.1.optimizer.lr=0.001", "stages.1.optimizer.param_groups={base.: {lr: 0.0005}}")
    runner.run_config(cfg)
    run_dir = tmp_path / "mislas" / "seed0"
    before = torch.load(run_dir / "stage0_stage1.pt")["model"]
    after = torch.load(run_dir / "stage1_las.pt")["model"]
    weights = [k for k in before if k.startswith("encoder.") and ("conv" in k or k.endswith(("weight", "bias")))]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert weights and stats
    for key in weights:  # the encoder's parameters never change
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(before[k], after[k]) for k in stats) == shift_bn
    # the stage-1 classifier is re-trained (train_base) together with the new LWS scale
    assert not torch.equal(before["head.fc.weight"], after["head.base.fc.weight"])
    assert not torch.equal(after["head.scale"], torch.ones_like(after["head.scale"]))


def test_shift_bn_needs_online_features(tmp_path):
    from longtail.errors import ConfigError

    with pytest.raises(ConfigError, match="shift_bn"):
        runner.run_config(config(tmp_path, "mislas", "stages.1.features=cached"))


def test_a_failing_torch_compile_stops_with_the_fix(tmp_path, monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("backend exploded\nlong compiler trace")

    monkeypatch.setattr(torch, "compile", lambda module, **options: Broken())
    with pytest.raises(TrainingError, match=r"torch.compile failed \(RuntimeError: backend exploded\); run with engine.compile=off"):
        runner.run_config(config(tmp_path, "ce", "engine.compile=on"))


def test_compile_leaves_classifier_only_stages_alone(tmp_path, monkeypatch):
    """engine.compile compiles the encoder of whole-network stages only: a stage on a frozen encoder
    calls no compiled code and reports no compile time."""
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **options: compiled.append(module) or real_compile(
        module, backend="aot_eager", **options))
    results = runner.run_config(config(tmp_path, "crt", "engine.compile=on", "stages.1.epochs=2"))
    assert len(compiled) == 1  # stage 1's encoder only
    assert results["timings"][0]["compile_seconds"] > 0 and results["timings"][1]["compile_seconds"] == 0


def test_cudnn_autotuning_is_off_by_default_never_on_cpu_and_rejects_unknown_values():
    """engine.cudnn_benchmark: off by default (the setting every recorded GPU number was measured
    with), never on the CPU (nothing to tune), recorded in the run's runtime; a value other than
    auto/on/off names the setting."""
    from longtail.config import EngineConfig
    from longtail.engine.device import Runtime
    from longtail.errors import ConfigError

    assert EngineConfig().cudnn_benchmark == "off"
    cpu = Runtime.resolve(EngineConfig(device="cpu", cudnn_benchmark="auto"))
    assert cpu.cudnn_benchmark is False and cpu.describe()["cudnn_benchmark"] is False
    assert Runtime.resolve(EngineConfig(device="cpu", cudnn_benchmark="on")).cudnn_benchmark is False
    with pytest.raises(ConfigError, match="engine.cudnn_benchmark must be auto, on or off"):
        Runtime.resolve(EngineConfig(device="cpu", cudnn_benchmark="fastest"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cudnn_autotuning_follows_the_setting_on_cuda():
    from longtail.config import EngineConfig
    from longtail.engine.device import Runtime

    assert Runtime.resolve(EngineConfig(device="cuda", cudnn_benchmark="auto")).cudnn_benchmark
    assert torch.backends.cudnn.benchmark
    assert not Runtime.resolve(EngineConfig(device="cuda")).cudnn_benchmark
    assert not torch.backends.cudnn.benchmark


def test_environment_records_the_declared_commit_beside_the_checkout(monkeypatch):
    """A copied checkout (a GPU machine's) may sit at an older commit: LONGTAIL_COMMIT, when set,
    is recorded beside git's answer, never instead of it."""
    from longtail.engine.device import Runtime
    from longtail.config import EngineConfig

    runtime = Runtime.resolve(EngineConfig(device="cpu"))
    monkeypatch.delenv("LONGTAIL_COMMIT", raising=False)
    assert "declared_commit" not in runner.environment(runtime)
    monkeypatch.setenv("LONGTAIL_COMMIT", "0123abc")
    env = runner.environment(runtime)
    assert env["declared_commit"] == "0123abc" and env["commit"] == runner.git_commit()
