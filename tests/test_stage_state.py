"""Stages keep what they decide in their own state, not in the config (issue 27): the config a run
is given is frozen, ``results.json`` records each stage's state as ``stage_records``, checkpoints
carry the states and a resume continues from them."""
import dataclasses

import pytest
import torch
import yaml

from longtail.config import thaw, to_dict
from longtail.engine import runner
from longtail.engine.runner import Run, saved_stage_states

from .conftest import config, interrupt_at, tiny_dataset


def tau_norm_config(tmp_path):
    # the tau_norm recipe with tau chosen on the validation split (no fixed tau)
    return config(tmp_path, "tau_norm", "stages.0.epochs=2", "stages.1.options={grid: [0.0, 0.5, 1.0]}")


def test_a_run_leaves_its_config_as_given_and_records_what_its_stages_decided(tmp_path):
    cfg = tau_norm_config(tmp_path)
    given = to_dict(cfg)
    results = Run(cfg, dataset=tiny_dataset(val=True)).execute()
    assert to_dict(cfg) == given
    assert yaml.safe_load((tmp_path / "tau_norm" / "seed0" / "config.yaml").read_text()) == given
    assert results["stage_options"] == [{}, {"grid": [0.0, 0.5, 1.0]}]  # the settings, as given
    assert results["stage_records"][0] == {}
    assert results["stage_records"][1]["chosen_tau"] in (0.0, 0.5, 1.0)


def test_the_config_of_a_run_refuses_changes(tmp_path):
    cfg = tau_norm_config(tmp_path)
    run = Run(cfg, dataset=tiny_dataset(val=True))
    for change in (
        lambda c: setattr(c, "seed", 1),
        lambda c: setattr(c.stages[0], "epochs", 3),
        lambda c: c.stages[1].options.__setitem__("chosen_tau", 1.0),
        lambda c: c.stages[0].loss.update(name="focal"),
        lambda c: c.stages[0].schedule.__setattr__("milestones", [1]),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError, match="frozen once validated"):
            change(run.config)
    with pytest.raises(AttributeError):
        run.config.stages.append(run.config.stages[0])  # the stage list is a tuple
    cfg.seed = 5  # the caller's config is the caller's: the run holds its own frozen copy
    assert run.config.seed == 0
    mutable = thaw(run.config)
    mutable.stages[1].options["tau"] = 1.0
    assert to_dict(mutable)["stages"][1]["options"] == {"grid": [0.0, 0.5, 1.0], "tau": 1.0}


def test_max_norm_thresholds_survive_a_resume_inside_the_stage(tmp_path, monkeypatch):
    """MaxNorm's thresholds come from the head's norms when stage 2 starts; a resumed stage 2 must
    cap at those, not at the norms of the head it resumes with (the stage's state carries them)."""
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)
    extra = ("stages.0.epochs=2", "stages.1.epochs=4", "stages.1.batch_size=16", "stages.1.schedule.milestones=[]",
             "engine.checkpoint_every=1")
    whole = runner.run_config(config(tmp_path / "whole", "wd_maxnorm_cb", *extra))
    interrupt_at(monkeypatch, 2, stage="maxnorm_cb")
    with pytest.raises(KeyboardInterrupt):
        runner.run_config(config(tmp_path / "split", "wd_maxnorm_cb", *extra))
    resumed = runner.run_config(config(tmp_path / "split", "wd_maxnorm_cb", *extra))
    assert resumed["resumed_from"] == {"stage": 1, "epoch": 2}
    thresholds = whole["stage_records"][1]["max_norm_threshold"]
    assert thresholds is not None and resumed["stage_records"][1]["max_norm_threshold"] == thresholds
    final = [torch.load(tmp_path / part / "wd_maxnorm_cb" / "seed0" / "stage1_maxnorm_cb.pt")["model"]["head.fc.weight"]
             for part in ("whole", "split")]
    torch.testing.assert_close(final[0], final[1], rtol=0, atol=0)


def test_a_checkpoint_from_before_stage_states_resumes_with_what_its_options_held(tmp_path):
    """Older checkpoints kept the stages' decisions inside ``stage_options`` (LADC's under ``record``)."""
    cfg = config(tmp_path, "ladc")
    saved = {"stage_options": [dict(s.options) for s in cfg.stages]}
    saved["stage_options"][0]["max_norm_threshold"] = [1.0, 2.0]
    saved["stage_options"][1]["record"] = {"beta": 0.7, "beta_source": "validation"}
    states = saved_stage_states(saved, cfg)
    assert states == [{"max_norm_threshold": [1.0, 2.0]}, {"beta": 0.7, "beta_source": "validation"}]
    assert saved_stage_states({"stage_states": states}, cfg) == states
