"""A run folder is bound to its config (issue 23): the same config is reported again or resumed,
--fresh moves the old run aside only once the new one is built, inspection writes nothing, a NaN
metric is written as null, a resume never records an epoch twice."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import longtail.engine.runner as runner
from longtail.cli import main
from longtail.config import config_changes, config_fingerprint, load_config, read_run_config, to_dict
from longtail.engine.checkpoint import load_checkpoint
from tests.conftest import interrupt_at
from longtail.data.dataset import ArraySplit
from longtail.errors import ConfigError, DataError, TrainingError
from tests.test_bad_input import snapshot, write_features
from tests.test_engine import NaNFromEpochThree


def args(tmp_path: Path, *extra: str) -> list[str]:
    features = tmp_path / "f.npz"
    if not features.exists():
        write_features(features)
    return ["train", "data.dataset=features", f"data.train_file={features}", f"output_dir={tmp_path / 'runs'}",
            "name=r", "stages.0.epochs=4", "stages.0.batch_size=8", "engine.checkpoint_every=2", *extra]


def folder(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "r" / "seed0"


def epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_finished_run_of_the_same_config_is_reported_again_and_options_go_anywhere(tmp_path, capsys):
    assert main([*args(tmp_path), "--no-progress"]) == 0
    before = snapshot(folder(tmp_path))
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder(tmp_path).iterdir()}
    assert set(modes.values()) == {0o666 & ~_umask()}, modes  # every run file as open() makes it
    capsys.readouterr()
    # display and thread settings cannot change results: the same run; flags before or after overrides
    assert main(["train", "--no-progress", *args(tmp_path)[1:], "engine.cpu_threads=2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "r (seed 0) — test" in out and "run folder:" in out
    assert snapshot(folder(tmp_path)) == before


def test_fresh_moves_the_old_run_aside_once_the_new_one_is_built(tmp_path, capsys):
    assert main([*args(tmp_path), "--no-progress"]) == 0
    before = snapshot(folder(tmp_path))
    with pytest.warns(UserWarning, match=r"--fresh: the earlier run folder .*r/seed0 was moved to .*r/old-seed0-\d{8}-\d{6}"):
        assert main([*args(tmp_path, "stages.0.loss.name=focal"), "--fresh", "--no-progress"]) == 0
    [aside] = (tmp_path / "runs" / "r").glob("old-seed0-*")
    old = snapshot(aside)
    old["<beside>"] = before["<beside>"]  # the folders beside it now include the new run
    assert old == before  # moved, not touched
    assert "focal" in (folder(tmp_path) / "config.yaml").read_text()
    assert json.loads((folder(tmp_path) / "results.json").read_text())["stage_options"] == [{}]


def test_eval_and_report_write_nothing_and_report_the_macro_columns(tmp_path, capsys):
    assert main([*args(tmp_path), "--no-progress"]) == 0
    run_dir = folder(tmp_path)
    before = snapshot(run_dir)
    mtimes = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--per-class"]) == 0
    assert "after stage 'stage1' epoch 4" in capsys.readouterr().out
    assert main(["report", str(run_dir)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert "macro acc" in header and "macro F1" in header and row.count("±") == 5  # "many": n/a (no such class)
    assert snapshot(run_dir) == before
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == mtimes


def test_results_are_written_when_a_metric_is_nan(tmp_path, monkeypatch):
    evaluate = runner.evaluate_model

    def nan_nll(*a, **k):
        return dataclasses.replace(evaluate(*a, **k), nll=float("nan"))

    monkeypatch.setattr(runner, "evaluate_model", nan_nll)
    with pytest.warns(UserWarning, match=r"results.json: 1 value\(s\) are NaN or infinite and are written as null: test.nll"):
        assert main([*args(tmp_path), "--no-progress"]) == 0
    results = json.loads((folder(tmp_path) / "results.json").read_text())
    assert results["test"]["nll"] is None and results["test"]["top1"] > 0


def test_a_resume_records_each_epoch_once_and_drops_stale_temporaries(tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 3)  # epochs 1-3 logged, the checkpoint at epoch 2
    assert main([*args(tmp_path), "--no-progress"]) == 130
    run_dir = folder(tmp_path)
    assert epochs(run_dir) == [1, 2, 3] and load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 2
    (run_dir / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    config_yaml = (run_dir / "config.yaml").read_bytes()
    assert main([*args(tmp_path), "--no-progress", "engine.checkpoint_every=1"]) == 0  # cadence: the same run
    assert epochs(run_dir) == [1, 2, 3, 4]
    assert not list(run_dir.glob(".*.tmp"))
    assert (run_dir / "config.yaml").read_bytes() == config_yaml  # the record of how the run started
    assert json.loads((run_dir / "results.json").read_text())["resumed_from"] == {"stage": 0, "epoch": 2}


def test_a_folder_from_before_the_fingerprint_is_compared_with_its_config_yaml(tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 3)
    assert main([*args(tmp_path), "--no-progress"]) == 130
    run_dir = folder(tmp_path)
    (run_dir / "config.sha256").unlink()
    with pytest.raises(ConfigError, match=r"1 setting\(s\) differ: stages.0.optimizer.lr: 0.05 -> 0.01"):
        runner.run_config(load_config(None, args(tmp_path, "stages.0.optimizer.lr=0.01")[1:]))
    assert not (run_dir / "config.sha256").exists()
    assert main([*args(tmp_path), "--no-progress"]) == 0  # the same config resumes
    assert (run_dir / "config.sha256").is_file()


@pytest.mark.parametrize("checkpoint_every, says", [
    (2, r"The last checkpoint \(.*checkpoint.pt: stage 'stage1', epoch 2\) is intact."),
    (0, r"No checkpoint had been written yet \(engine.checkpoint_every sets how often\)."),
])
def test_a_failed_stage_says_what_was_kept(tmp_path, checkpoint_every, says, register_loss):
    register_loss("test_nan_from_epoch_3", NaNFromEpochThree)
    cfg = load_config(None, [*args(tmp_path, "stages.0.loss={name: test_nan_from_epoch_3}",
                                          f"engine.checkpoint_every={checkpoint_every}", "engine.progress=false")[1:]])
    with pytest.raises(TrainingError, match=r"epoch 3: the training loss is not finite .*--fresh or a new name=.* "
                                            + says) as err:
        runner.run_config(cfg)
    assert ("intact" in str(err.value)) == (checkpoint_every > 0)


def test_nan_in_the_training_inputs_is_named_not_blamed_on_the_learning_rate(tmp_path, monkeypatch):
    """A dataset built in Python (no file check on the way): the loss turns NaN, the rows are named."""
    from tests.conftest import tiny_dataset

    def with_nan(_config=None):
        dataset = tiny_dataset()
        x = dataset.train.x.astype(np.float32).reshape(len(dataset.train), -1)[:, :6]
        x[[3, 17]] = np.nan
        dataset.train = ArraySplit(x, dataset.train.y, np.arange(100, 100 + len(x)))
        dataset.test = ArraySplit(dataset.test.x.astype(np.float32).reshape(len(dataset.test), -1)[:, :6], dataset.test.y)
        dataset.mean = dataset.std = None
        return dataset

    monkeypatch.setattr(runner, "load_dataset", with_nan)
    cfg = load_config(None, args(tmp_path, "engine.progress=false")[1:])
    with pytest.raises(DataError, match=r"tiny: 2 training input\(s\) hold NaN or inf values \(rows 3, 17 of the "
                                        r"training split; source rows 103, 117\), so the loss cannot be finite: fix or "
                                        r"drop those rows \(the learning rate is not the cause\)"):
        runner.run_config(cfg)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_the_fingerprint_ignores_only_settings_that_cannot_change_results(tmp_path):
    base = load_config(mapping={"method": "ldam_drw"}, overrides=["epoch_scale=0.5"])
    same = load_config(mapping={"method": "ldam_drw"}, overrides=[
        "epoch_scale=0.5", "name=x", "method=another_recipe", "output_dir=elsewhere", "data.cache_dir=c", "engine.progress=false",
        "engine.tensorboard=true", "engine.cpu_threads=3", "engine.checkpoint_every=7"])
    assert config_fingerprint(same) == config_fingerprint(base) and config_changes(base, same) == []
    for override in ("seed=1", "stages.0.loss.max_m=0.4", "engine.amp=off", "eval.select=last", "data.root=/d"):
        other = load_config(mapping={"method": "ldam_drw"}, overrides=["epoch_scale=0.5", override])
        assert (config_fingerprint(other) != config_fingerprint(base)) == bool(config_changes(base, other)), override
    assert config_changes(base, load_config(mapping={"method": "ldam_drw"}, overrides=["epoch_scale=0.5", "seed=1"])) \
        == ["seed: 0 -> 1"]
    # the recorded config.yaml reads back as it was: no recipe, base file or epoch scale applied again
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(base), sort_keys=False))
    assert config_fingerprint(read_run_config(tmp_path / "config.yaml")) == config_fingerprint(base)
