"""The command line: train, eval, report, errors with exit code 2 and a fix."""
import longtail.engine.runner as runner
from longtail.cli import main
from tests.conftest import tiny_dataset

SMALL = ["stages.0.epochs=2", "stages.0.batch_size=16", "model.encoder=resnet20", "engine.progress=false"]


def test_train_eval_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)
    assert main(["train", f"output_dir={tmp_path}", "name=cli", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "Many" in out and "Few" in out and "run folder" in out
    run = tmp_path / "cli" / "seed0"
    assert main(["eval", str(run), "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "after stage 'stage1' epoch 2" in out
    assert main(["report", str(run)]) == 0
    assert "cli" in capsys.readouterr().out


def test_bad_override_exits_2_with_the_fix(capsys):
    assert main(["train", "stages.0.epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_missing_config_file_is_a_clear_error(capsys):
    assert main(["train", "does/not/exist.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_the_builtin_default_runs_on_the_real_digits_data(tmp_path, capsys):
    """The README's first command (`longtail train`), shortened to two epochs."""
    assert main(["train", f"output_dir={tmp_path}", "stages.0.epochs=2", "engine.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "digits_lt_ce (seed 0)" in out and "Few <20" in out
    assert (tmp_path / "digits_lt_ce" / "seed0" / "results.json").is_file()
