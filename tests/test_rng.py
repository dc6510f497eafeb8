"""Each run draws from its own generators (issue 27 item 6): runs in one process do not disturb
each other or the global generators, the generators round-trip through a checkpoint, and a
checkpoint of the code before them (the global states) still resumes."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import longtail.engine.runner as runner
from longtail.engine.checkpoint import atomic_save, load_checkpoint
from longtail.engine.rng import RunRNG
from longtail.engine.stacked import StackedRun

from .conftest import config, interrupt_at, tiny_dataset

# crop + flip, mixup and the equalization loss (with a tail class at this threshold) all draw
DRAWING = ("stages.0.augment=crop_flip", "stages.0.mixing={name: mixup}",
           "stages.0.loss={name: equalization, threshold: 0.1}", "engine.device=cpu")


@pytest.fixture(autouse=True)
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path / "stage0_stage1.pt")["model"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_the_generators_round_trip_through_a_checkpoint(tmp_path):
    rng = RunRNG(7)
    rng.numpy.random(3)
    atomic_save({"generators": rng.state_dict()}, tmp_path / "g.pt")
    expected = torch.rand(4, generator=rng.torch), rng.numpy.random(4)
    other = RunRNG(99)
    other.load_state_dict(load_checkpoint(tmp_path / "g.pt")["generators"])
    assert torch.equal(torch.rand(4, generator=other.torch), expected[0])
    np.testing.assert_array_equal(other.numpy.random(4), expected[1])


def test_a_run_leaves_the_global_generators_as_it_found_them(tmp_path):
    torch.manual_seed(123)
    np.random.seed(5)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    runner.run_config(config(tmp_path, "ce", "stages.0.epochs=2", *DRAWING))
    assert torch.equal(torch.get_rng_state(), before[0])
    np.testing.assert_array_equal(np.random.get_state()[1], before[1])


def test_a_stack_leaves_the_global_generators_as_it_found_them(tmp_path):
    torch.manual_seed(123)
    np.random.seed(5)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    results = StackedRun([config(tmp_path, "ce", f"seed={s}", "stages.0.epochs=1", "model.encoder=resnet8", *DRAWING)
                          for s in (0, 1)]).execute()
    assert all(r["stacked"]["members"] == 2 for r in results)
    assert torch.equal(torch.get_rng_state(), before[0])
    np.testing.assert_array_equal(np.random.get_state()[1], before[1])


def test_two_runs_interleaved_in_threads_equal_each_run_alone(tmp_path):
    seeds = (0, 1)
    alone = {s: runner.run_config(config(tmp_path / "alone", "ce", f"seed={s}", *DRAWING)) for s in seeds}
    together: dict[int, dict] = {}
    threads = [threading.Thread(target=lambda s=s: together.__setitem__(
        s, runner.run_config(config(tmp_path / "together", "ce", f"seed={s}", *DRAWING)))) for s in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for s in seeds:
        assert_same(weights(tmp_path / "alone" / "ce" / f"seed{s}"), weights(tmp_path / "together" / "ce" / f"seed{s}"))
        assert together[s]["test"]["top1"] == alone[s]["test"]["top1"]
    seed0, seed1 = (weights(tmp_path / "alone" / "ce" / f"seed{s}") for s in seeds)
    assert not all(torch.equal(seed0[k], seed1[k]) for k in seed0)


def test_a_checkpoint_of_the_code_before_run_generators_resumes_exactly_within_its_stage(tmp_path, monkeypatch):
    """The old code kept the global states (``rng``; numpy's as a tuple with an array): the run's
    device stream continues the global one, so on the CPU the rest of the stage is as uninterrupted."""
    whole = runner.run_config(config(tmp_path / "whole", "ce", *DRAWING))
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        runner.run_config(config(tmp_path / "split", "ce", *DRAWING))
    path = tmp_path / "split" / "ce" / "seed0" / "checkpoint.pt"
    checkpoint = load_checkpoint(path)
    generators = checkpoint.pop("generators")
    checkpoint["rng"] = {"torch": generators["torch"], "numpy": np.random.get_state()}  # the old layout
    torch.save(checkpoint, path)
    resumed = runner.run_config(config(tmp_path / "split", "ce", *DRAWING))
    assert resumed["resumed_from"] == {"stage": 0, "epoch": 2}
    assert_same(weights(tmp_path / "whole" / "ce" / "seed0"), weights(tmp_path / "split" / "ce" / "seed0"))
    assert resumed["test"]["top1"] == whole["test"]["top1"]
