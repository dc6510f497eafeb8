"""bench/train_curves.py: training accuracy by epoch from the run folders of a results file."""
import json

from longtail.bench.train_curves import main, stage_one_accuracy


def _run(folder, accs, stage2=()):
    folder.mkdir(parents=True)
    lines = [{"stage": "stage1", "epoch": e + 1, "train_acc": a, "loss": 1.0} for e, a in enumerate(accs)]
    lines += [{"stage": "stage2", "epoch": e + 1, "train_acc": a} for e, a in enumerate(stage2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(folder)


def test_table_of_train_accuracy_by_epoch(tmp_path, capsys):
    dirs = [_run(tmp_path / "a" / f"seed{s}", [50.0 + s, 60.0 + 2 * s], stage2=[99.0]) for s in (0, 1)]
    assert stage_one_accuracy(tmp_path / "a" / "seed0") == {1: 50.0, 2: 60.0}  # stage 2 is not mixed in
    results = {"cells": [{"method": "ce", "seeds": [0, 1], "run_dirs": dirs, "commit": "abcdef123456"},
                         {"method": "other", "seeds": [0], "run_dirs": dirs[:1], "commit": "x"}]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "t.md"
    assert main([str(path), "--methods", "ce", "--epochs", "1", "2", "--output", str(out)]) == 0
    text = out.read_text()
    assert "| ce | 0, 1 | 50.5 ± 0.7 | 61.0 ± 1.4 | abcdef1234 |" in text
    assert "other" not in text.split("Command")[1].split("\n", 2)[2]
