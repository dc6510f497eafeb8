"""Every bad input of issue 23, as a table: the command, the one-line error it must print (exit 2,
no traceback), and the run folder it could have harmed, which must be byte-identical afterwards.

Two run folders are made once: ``done`` (a finished run) and ``cut`` (interrupted after epoch 2 of
4, its checkpoint at epoch 2). The runs train on a small features file through the real loaders.
"""
from __future__ import annotations

import errno
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from longtail.cli import main
from longtail.engine.checkpoint import atomic_save, load_checkpoint
from tests.conftest import interrupt_at
from longtail.errors import LongTailError

COUNTS = [20, 10, 5, 3]


def write_features(path: Path, rows=None, **change) -> Path:
    """A 4-class features file (38 train rows, 16 test rows); ``change`` replaces arrays."""
    rng = np.random.default_rng(0)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(COUNTS)] + [np.repeat(np.arange(4), 4)])
    arrays = {"features": (rng.normal(size=(y.size, 6)) + 3 * np.eye(4, 6)[y]).astype(np.float32), "labels": y,
              "split": np.array(["train"] * sum(COUNTS) + ["test"] * 16)}
    arrays.update(change)
    np.savez(path, **arrays)
    return path


class OpensAFile:
    """Unpickling this creates ``marker``: what a malicious features file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace: the features files, both run folders and the bad inputs."""
    ws = tmp_path_factory.mktemp("bad_input")
    features = write_features(ws / "f.npz")
    assert main(["train", *base_args(ws)]) == 0
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, 2)
        assert main(["train", *base_args(ws), "name=cut"]) == 130
    assert load_checkpoint(ws / "runs" / "cut" / "seed0" / "checkpoint.pt")["epoch"] == 2

    x = np.load(features)["features"]
    write_features(ws / "short_labels.npz", labels=np.arange(x.shape[0] - 1) % 4)
    nan = x.copy()
    nan[5, 2] = np.nan
    write_features(ws / "nan.npz", features=nan)
    np.save(ws / "evil.npy", {"features": x, "labels": OpensAFile(ws / "marker")}, allow_pickle=True)
    np.savez(ws / "evil.npz", features=x, labels=np.array([OpensAFile(ws / "marker")] * len(x), dtype=object))
    (ws / "empty.csv").write_text("")
    (ws / "header.csv").write_text("text,label,split\n")
    (ws / "empty.yaml").write_text("# nothing yet\n")
    (ws / "a_file").write_text("not a folder")
    atomic_save({"model": {"w": torch.ones(2)}}, ws / "valid.pt")
    return ws


def base_args(ws: Path) -> list[str]:
    return ["data.dataset=features", f"data.train_file={ws / 'f.npz'}", f"output_dir={ws / 'runs'}", "name=done",
            "stages.0.epochs=4", "stages.0.batch_size=8", "engine.checkpoint_every=2", "--no-progress"]


def full_disk_save(real_save):
    """torch.save onto a disk that is full: the write fails as on a real one (OSError, then torch's
    ``RuntimeError: [enforce fail at inline_container.cc]``)."""

    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    return lambda obj, handle, *args, **kwargs: real_save(obj, Full(), *args, **kwargs)


def load_on_missing_device(ws: Path) -> None:
    load_checkpoint(ws / "valid.pt", map_location="cuda:7")


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]] | None  # `longtail train` arguments after base_args (later ones win)
    expect: str  # regex the one-line error must match
    folder: str = "done"  # the run folder that must come out byte-identical
    files: tuple[str, ...] = ()  # only these files of it (default: the whole folder)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    call: Callable[[Path], None] | None = None  # a library call instead of the command line


DIFFER = r"runs/{0}/seed0 holds a run of another config \(1 setting\(s\) differ: {1}\); to keep both, give this run " \
         r"a new name=NAME or output_dir=DIR; to replace the old run, add --fresh \(it is moved aside, not deleted\)"

CASES = [
    # wrong numbers, silently: another config on a finished run, or mixed into an interrupted one
    Case("another loss on a finished run", lambda ws: ["stages.0.loss.name=focal"],
         DIFFER.format("done", r"stages.0.loss.name: 'ce' -> 'focal'")),
    Case("another imbalance factor", lambda ws: ["data.imbalance_factor=100"],
         DIFFER.format("done", r"data.imbalance_factor: 10.0 -> 100.0")),
    Case("more epochs", lambda ws: ["stages.0.epochs=5"], DIFFER.format("done", r"stages.0.epochs: 4 -> 5")),
    Case("resume with another loss", lambda ws: ["name=cut", "stages.0.loss.name=focal"],
         DIFFER.format("cut", r"stages.0.loss.name: 'ce' -> 'focal'"), folder="cut"),
    Case("resume with another encoder", lambda ws: ["name=cut", "model.encoder=resnet8"],
         DIFFER.format("cut", r"model.encoder: 'resnet32' -> 'resnet8'"), folder="cut"),
    # work lost: --fresh with a typo
    Case("--fresh with a typo", lambda ws: ["--fresh", "stages.0.loss.name=cee"],
         r"stage 'stage1': unknown loss 'cee' \(did you mean 'ce'\?\); valid names: "),
    # tracebacks instead of errors (all with --fresh: a bad input never costs the old run)
    Case("features and labels of different lengths", lambda ws: ["--fresh", f"data.train_file={ws / 'short_labels.npz'}"],
         r"short_labels.npz: 54 feature rows but 53 labels; give one label per feature row"),
    Case("empty CSV", lambda ws: ["--fresh", "data.dataset=text", f"data.train_file={ws / 'empty.csv'}",
                                  "data.split_column=split"],
         r"empty.csv: no training rows \(an empty file, a header line only, or no rows marked train\); add training rows"),
    Case("header-only CSV", lambda ws: ["--fresh", "data.dataset=text", f"data.train_file={ws / 'header.csv'}",
                                        "data.split_column=split"],
         r"header.csv: no training rows \(an empty file, a header line only"),
    Case("engine.device=gpu", lambda ws: ["--fresh", "engine.device=gpu"],
         r"engine.device must be auto, cpu, cuda or cuda:N \(e.g. cuda:0\), got 'gpu'"),
    Case("output folder not writable", lambda ws: [f"output_dir={ws / 'a_file' / 'runs'}"],
         r"cannot create the folder .*a_file/runs/done/seed0 \(\w+Error: .*\); make its parent writable or set "
         r"output_dir= to a folder you can write"),
    Case("disk full while checkpointing", lambda ws: ["name=cut"],
         r"cannot write .*runs/cut/seed0/checkpoint.pt \(OSError: \[Errno 28\] No space left on device\); the previous "
         r"checkpoint.pt is intact. Free disk space", folder="cut", files=("checkpoint.pt", "config.yaml", "env.json"),
         patch=lambda mp: mp.setattr(torch, "save", full_disk_save(torch.save))),
    Case("NaN in the training features", lambda ws: ["--fresh", f"data.train_file={ws / 'nan.npz'}"],
         r"nan.npz: 1 feature row\(s\) hold NaN or inf values \(0-based rows 5\); fix or drop those rows"),
    Case("a .npy whose pickle would run code", lambda ws: ["--fresh", f"data.train_file={ws / 'evil.npy'}"],
         r"evil.npy was refused: the file names (builtins|io).open, which is not a numpy array or a plain value; "
         r"unpickling it could run code, so it is not loaded; save the arrays with np.savez"),
    Case("a .npz holding Python objects", lambda ws: ["--fresh", f"data.train_file={ws / 'evil.npz'}"],
         r"evil.npz holds arrays of Python objects \(.*\); longtail does not unpickle them \(that can run code\): "
         r"save the arrays with np.savez"),
    Case("an empty YAML file", lambda ws: [str(ws / "empty.yaml")],
         r"config file .*empty.yaml is empty; write the config in it \(e.g. `method: ce`\), or leave out the file"),
    Case("data.counts without profile=explicit", lambda ws: ["--fresh", "data.counts=[20,10,5,3]"],
         r"data.counts is used only with data.profile=explicit \(data.profile is 'exp'\): add data.profile=explicit, "
         r"or remove data.counts"),
    Case("init_from weights of another model", lambda ws: ["name=other", f"stages.0.init_from={ws / 'valid.pt'}"],
         r"the weights in .*valid.pt do not fit the model this config builds \(Error\(s\) in loading state_dict for "
         r"LTModel: Missing key\(s\) in state_dict: .*\): they come from another model \(encoder, head or code version\); use weights of this model"),
    Case("a valid checkpoint on a missing device", None, call=load_on_missing_device, expect=
         r"valid.pt is intact but cannot be loaded onto cuda:7 \(RuntimeError: .*\); run where that device exists, "
         r"or on another one \(e.g. engine.device=cpu\)"),
]


def snapshot(folder: Path, files: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``folder`` (or only ``files``) with its bytes, plus the folders beside it."""
    paths = [folder / f for f in files] if files else sorted(p for p in folder.rglob("*") if p.is_file())
    state = {str(p.relative_to(folder)): p.read_bytes() for p in paths}
    state["<beside>"] = repr(sorted(p.name for p in folder.parent.iterdir())).encode()
    return state


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_naming_problem_and_fix_and_loses_nothing(case, ws, capsys, monkeypatch):
    folder = ws / "runs" / case.folder / "seed0"
    before = snapshot(folder, case.files)
    if case.patch:
        case.patch(monkeypatch)
    capsys.readouterr()
    if case.call is not None:  # printed as the command line prints the library's errors
        with pytest.raises(LongTailError) as err:
            case.call(ws)
        status, err_text = 2, f"longtail: error: {err.value}\n"
    else:
        status, err_text = main(["train", *base_args(ws), *case.args(ws)]), capsys.readouterr().err
    monkeypatch.undo()
    assert status == 2, err_text
    assert err_text.startswith("longtail: error: ") and err_text.count("\n") == 1, err_text  # one line
    assert "Traceback" not in err_text and "delete it" not in err_text
    assert re.search(case.expect, err_text), err_text
    assert snapshot(folder, case.files) == before  # nothing lost or altered
    assert not (ws / "marker").exists()  # no file loaded ran code


def test_a_bug_inside_the_library_keeps_its_traceback(ws, monkeypatch):
    """Only the library's own errors get the one-line treatment: a KeyError from a bug propagates."""
    import longtail.engine.runner as runner

    def broken(*args, **kwargs):
        raise KeyError("some_internal_key")

    monkeypatch.setattr(runner, "load_dataset", broken)
    with pytest.raises(KeyError, match="some_internal_key"):
        main(["train", *base_args(ws), "name=bug"])


def test_the_table_covers_every_case_and_pickle_would_have_run_code(ws):
    """The malicious files are real: plain unpickling does create the marker."""
    assert len(CASES) == len({c.name for c in CASES}) == 19
    with open(ws / "evil.npy", "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        pickle.load(f)
    assert (ws / "marker").exists()
    (ws / "marker").unlink()
