"""epoch_scale: every packaged recipe's epoch events keep their fraction of the shortened stage."""
from __future__ import annotations

from importlib import resources

import pytest
import yaml

from longtail.config import load_config, to_dict
from longtail.errors import ConfigError
from longtail.scaling import NOT_EPOCH_VALUED, STAGE_EPOCH_KEYS, declared_epoch_keys

RECIPES = sorted(p.name[:-5] for p in resources.files("longtail.recipes").iterdir() if p.name.endswith(".yaml"))


def _events(stage) -> dict[str, list[int]]:
    """Every epoch-valued event of a stage (schedule and the loss / sampler / options mappings)."""
    found = {"warmup_epochs": [stage.schedule.warmup_epochs], "milestones": list(stage.schedule.milestones)}

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "start_epoch":
                    found.setdefault(f"{where}.start_epoch", []).append(value)
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for name in ("loss", "sampler", "options", "mixing"):
        walk(getattr(stage, name), name)
    return found


def _epoch_like_keys(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if "epoch" in str(key):
                out.add(key)
            _epoch_like_keys(value, out)
    elif isinstance(node, list):
        for item in node:
            _epoch_like_keys(item, out)
    return out


def test_every_epoch_named_key_of_the_recipes_is_declared():
    """A recipe key that holds epochs must be declared where it is defined (the stage's fields, the
    loss's epoch_params_of, the sampler's epoch_params, the stage kind's epoch_options), or be
    declared not epoch-valued; otherwise the scaling would leave it at its 200-epoch value."""
    for name in RECIPES:
        for stage in load_config(mapping={"method": name}).stages:
            declared = declared_epoch_keys(stage)
            for where in ("loss", "sampler", "options"):
                keys = _epoch_like_keys(getattr(stage, where), set())
                assert keys <= set(declared[where]) | NOT_EPOCH_VALUED, (name, where, keys)
            fields = _epoch_like_keys({k: v for k, v in to_dict(stage).items() if k not in ("loss", "sampler", "options")}, set())
            assert fields <= set(STAGE_EPOCH_KEYS) | NOT_EPOCH_VALUED, (name, fields)


def test_a_new_loss_declares_its_epoch_parameter_and_is_scaled(monkeypatch):
    """Scaling reads the loss class's declaration: a new loss with an epoch-valued option needs no
    change to scaling.py, and an undeclared option is left alone."""
    from longtail.losses import LOSSES
    from longtail.losses.ce import CrossEntropyLoss

    class Warming(CrossEntropyLoss):
        epoch_params = ("ramp_until",)

    monkeypatch.setitem(LOSSES._items, "warming_ce", Warming)
    stage = load_config(mapping={"method": "ce"}, overrides=[
        "stages.0.loss={name: warming_ce, ramp_until: 100, other: 100}", "epoch_scale=0.1"]).stages[0]
    assert stage.loss == {"name": "warming_ce", "ramp_until": 10, "other": 100}


@pytest.mark.parametrize("name", RECIPES)
def test_scaled_events_keep_their_fraction_of_the_stage(name):
    full = load_config(mapping={"method": name})
    short = load_config(mapping={"method": name}, overrides=["epoch_scale=0.1"])
    assert short.scaled_by == pytest.approx(0.1) and short.epoch_scale == 1.0
    for before, after in zip(full.stages, short.stages):
        if before.train == "head":  # classifier stages on frozen features keep their length
            assert to_dict(after) == to_dict(before)
            continue
        assert after.epochs == max(1, int(before.epochs * 0.1 + 0.5))
        for key, values in _events(before).items():
            scaled = _events(after)[key]
            assert len(scaled) <= len(values)
            for v, w in zip(values, scaled):
                if v == 0:
                    assert w == 0
                    continue
                # the same fraction of the stage, within half an epoch of the short stage (+1 for a
                # milestone pulled inside 1 .. epochs-1)
                assert abs(w / after.epochs - v / before.epochs) <= 1.5 / after.epochs, (key, v, w)
    if full.stages[0].train == "all" and full.stages[0].epochs == 200:
        ev = _events(short.stages[0])
        assert short.stages[0].epochs == 20
        for key, values in _events(full.stages[0]).items():
            assert ev[key] == [int(v * 0.1 + 0.5) if v else 0 for v in values], key


def test_standard_recipe_events_map_to_the_same_fractions():
    """The 200-epoch CIFAR recipes at 0.1: warm-up 5 -> 1, decays 160/180 -> 16/18, DRW and DRS at
    160 -> 16 (80 % of the stage); BWLM's 320-epoch stage 1 -> 32, its review stage stays 320."""
    drw = load_config(mapping={"method": "ldam_drw"}, overrides=["epoch_scale=0.1"]).stages[0]
    assert (drw.epochs, drw.schedule.warmup_epochs, drw.schedule.milestones, drw.loss["start_epoch"]) == (20, 1, [16, 18], 16)
    drs = load_config(mapping={"method": "ce_drs"}, overrides=["epoch_scale=0.1"]).stages[0]
    assert drs.sampler["start_epoch"] == 16
    bwlm = load_config(mapping={"method": "bwlm"}, overrides=["epoch_scale=0.1"])
    assert [s.epochs for s in bwlm.stages] == [32, 320]
    short = load_config(mapping={"method": "ce"}, overrides=["epoch_scale=0.1"])
    assert short.engine.checkpoint_every == 2


def test_a_resolved_config_is_not_scaled_twice_and_scales_compose():
    once = load_config(mapping={"method": "ldam_drw"}, overrides=["epoch_scale=0.5"])
    again = load_config(mapping=to_dict(once))
    assert to_dict(again) == to_dict(once) and again.stages[0].loss["start_epoch"] == 80
    twice = load_config(mapping=to_dict(once), overrides=["epoch_scale=0.2"])
    assert twice.stages[0].epochs == 20 and twice.scaled_by == pytest.approx(0.1)


def test_a_file_overrides_its_recipe_and_the_recipe_overrides_do_not_win(tmp_path):
    """A config's own keys win over its recipe's ``overrides`` (they shape the recipe first)."""
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"method": "ldam_drw", "stages": [
        {"epochs": 50, "loss": {"name": "drw", "base": "ldam", "start_epoch": 40}}]}))
    config = load_config(path)
    assert config.stages[0].loss["start_epoch"] == 40


@pytest.mark.parametrize("bad", [0, -1, "fast"])
def test_a_bad_scale_is_refused(bad):
    with pytest.raises(ConfigError, match="epoch_scale"):
        load_config(overrides=[f"epoch_scale={bad}"])


def test_method_stage_kinds_are_registered_before_scaling_reads_their_declarations():
    """In a fresh interpreter, loading a scaled config registers the method packages' stage kinds
    first, so an epoch option a method kind declares is never skipped for being unregistered yet."""
    import subprocess
    import sys

    code = ("from longtail.config import load_config; from longtail.engine.stages import STAGE_KINDS; "
            "load_config(mapping={'method': 'ce'}, overrides=['epoch_scale=0.5']); "
            "assert {'glag_afg', 'ladc'} <= set(STAGE_KINDS), sorted(STAGE_KINDS)")
    subprocess.run([sys.executable, "-c", code], check=True)
