"""A stage whose loss diverges without NaN, or whose weights turn non-finite, stops with the stage,
the epoch, the loss against its running level and the fix; the last good checkpoint stays."""
import pytest
import torch

import longtail.engine.runner as runner
from longtail.config import load_config
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.trainer import DivergenceCheck
from longtail.errors import ConfigError, TrainingError
from longtail.losses import LOSSES
from longtail.losses.ce import CrossEntropyLoss

from .conftest import config, tiny_dataset


@pytest.fixture(autouse=True)
def fake_data(monkeypatch, register_loss):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)
    register_loss("test_x1000_from_epoch_4", JumpFromEpochFour)
    register_loss("test_poison_head_after_epoch_3", PoisonHead)


class JumpFromEpochFour(CrossEntropyLoss):
    """Cross-entropy x1000 from the fourth epoch on: finite, but far above its level.

    Only the value jumps: the gradient stays cross-entropy's. A x1000 gradient at lr 0.1 really
    does diverge, to NaN within an epoch or two depending on float rounding (it did at epoch 5 with
    torch 2.14), and then the non-finite check, not the jump check under test, stops the stage."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def on_epoch_start(self, epoch, total_epochs):
        self.scale.fill_(1000.0 if epoch >= 3 else 1.0)

    def per_sample(self, logits, targets):
        loss = super().per_sample(logits, targets)
        return loss + (self.scale - 1) * loss.detach()  # value x scale, gradient x1


class PoisonHead(CrossEntropyLoss):
    """Cross-entropy that writes inf into the head's weights at the end of the third epoch."""

    def __init__(self, head):
        super().__init__()
        self.fc, self.epoch = head.fc, 0

    def on_epoch_start(self, epoch, total_epochs):
        self.epoch = epoch

    def on_epoch_end(self):
        if self.epoch == 2:
            with torch.no_grad():
                self.fc.weight[0, 0] = float("inf")


def _saves(monkeypatch):
    """The bytes of checkpoint.pt after each save."""
    original, saved = runner.RunFolder.save, []

    def save(self, ctx, stage_index, epoch, trainer):
        original(self, ctx, stage_index, epoch, trainer)
        if self.writes:
            saved.append((self.run_dir / "checkpoint.pt").read_bytes())

    monkeypatch.setattr(runner.RunFolder, "save", save)
    return saved


def test_a_loss_that_jumps_x1000_stops_the_stage_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    saved = _saves(monkeypatch)
    cfg = config(tmp_path, "ce", "stages.0.epochs=5", "stages.0.loss={name: test_x1000_from_epoch_4}")
    with pytest.raises(TrainingError, match=r"stage 'stage1', epoch 4: the training loss diverged: \S+ is \S+x its "
                                            r"running level \S+ .*divergence_factor=100\).*Lower the learning rate "
                                            r"\(e.g. stages.0.optimizer.lr=0.01; it is 0.1\).*checkpoint .*intact"):
        runner.run_config(cfg)
    path = tmp_path / "ce" / "seed0" / "checkpoint.pt"
    assert load_checkpoint(path)["epoch"] == 2  # epoch 4 (a checkpoint epoch) wrote nothing
    assert path.read_bytes() == saved[-1]
    lines = (tmp_path / "ce" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # the diverged epoch is not logged either


def test_the_check_is_off_with_factor_zero(tmp_path):
    cfg = config(tmp_path, "ce", "stages.0.epochs=5", "stages.0.loss={name: test_x1000_from_epoch_4}",
                 "engine.divergence_factor=0")
    assert runner.run_config(cfg)["timings"][0]["stage"] == "stage1"


def test_non_finite_weights_stop_the_stage(tmp_path):
    cfg = config(tmp_path, "ce", "stages.0.loss={name: test_poison_head_after_epoch_3}")
    with pytest.raises(TrainingError, match=r"epoch 3: 1 trained weight tensor\(s\) hold NaN or inf.*lr="):
        runner.run_config(cfg)
    assert load_checkpoint(tmp_path / "ce" / "seed0" / "checkpoint.pt")["epoch"] == 2


def test_a_drw_run_does_not_trip(tmp_path):
    cfg = config(tmp_path, "ce", "stages.0.epochs=6", "stages.0.loss={name: drw, base: ce, start_epoch: 3}",
                 "stages.0.schedule.milestones=[3]")
    results = runner.run_config(cfg)
    assert results["timings"][0]["stage"] == "stage1"
    assert LOSSES.get("drw")([10, 5, 1], base="ce", start_epoch=3).loss_changes_at(3)


def test_the_running_level_restarts_where_the_loss_changes():
    check = DivergenceCheck("s", 2.0, "stages.0", 0.1)
    for epoch, loss in enumerate([1.0, 0.3, 0.2]):
        check(epoch, loss, 0)
    with pytest.raises(TrainingError, match=r"epoch 4: the training loss diverged: 1.1 is 5.5x its running level 0.2 "
                                            r"\(the lowest epoch loss since epoch 1"):
        check(3, 1.1, 0)
    check.restart()  # e.g. DRW switched on its weights at this epoch
    check(3, 1.1, 0)
    check(4, 0.9, 0)
    check(5, 0.95, 0)  # a loss that fell near zero may wobble below the span's first loss
    with pytest.raises(TrainingError, match="not finite"):
        check(6, float("nan"), 0)


def test_divergence_factor_is_validated():
    with pytest.raises(ConfigError, match="engine.divergence_factor must be more than 1, or 0 / null"):
        load_config(overrides=["engine.divergence_factor=0.5"])
    assert load_config(overrides=["engine.divergence_factor=null"]).engine.divergence_factor is None
    with pytest.raises(ConfigError, match="unknown key engine.divergence"):
        load_config(overrides=["engine.divergence=3"])
