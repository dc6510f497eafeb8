"""Config loading: recipes, base files, overrides, validation errors that say how to fix them."""
import pytest

from longtail.config import load_config, method_names, parse_override, to_dict
from longtail.engine.schedules import epoch_factor, factor_table
from longtail.engine.stages import stage_kind
from longtail.config import ScheduleConfig
from longtail.errors import ConfigError


def test_default_config_is_the_digits_ce_recipe():
    config = load_config()
    assert config.data.dataset == "digits"
    assert config.stages[0].loss == {"name": "ce"}


def test_overrides_set_nested_and_list_fields():
    config = load_config(None, ["stages.0.epochs=3", "seed=7", "stages.0.optimizer.lr=0.5", "data.imbalance_factor=20"])
    assert (config.stages[0].epochs, config.seed, config.stages[0].optimizer.lr) == (3, 7, 0.5)
    assert config.data.imbalance_factor == 20.0


@pytest.mark.parametrize(
    "override, hint",
    [("stages.0.epoch=3", "did you mean 'epochs'"), ("dta.root=x", "did you mean 'data'"), ("engine.devce=cpu", "did you mean 'device'")],
)
def test_unknown_keys_name_the_closest_valid_key(override, hint):
    with pytest.raises(ConfigError, match=hint):
        load_config(None, [override])


def test_unknown_key_in_a_file_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: ce\nmodel: {encodr: resnet32}\n")
    with pytest.raises(ConfigError, match="did you mean 'encoder'"):
        load_config(path)


def test_file_extends_a_packaged_method_and_a_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("method: ce\ndata: {dataset: cifar10, imbalance_factor: 50}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nseed: 3\n")
    config = load_config(tmp_path / "child.yaml")
    assert config.seed == 3 and config.data.imbalance_factor == 50
    assert config.stages[0].schedule.milestones == [160, 180]


def test_wrong_types_and_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(None, ["stages.0.epochs=many"])
    with pytest.raises(ConfigError, match="milestones"):
        load_config(None, ["stages.0.schedule.milestones=[500]"])
    with pytest.raises(ConfigError, match="val_per_class"):
        load_config(None, ["eval.select=best_val"])
    with pytest.raises(ConfigError, match="unknown method 'cee'.*did you mean 'ce'"):
        load_config(mapping={"method": "cee"})


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=0.5") == (["x"], 0.5)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_packaged_methods_load_and_reload_from_their_saved_form():
    """Every packaged recipe loads as itself with stages of registered kinds, and the config a run
    writes (config.yaml, ``to_dict``) loads back to the same config (what resuming relies on)."""
    names = method_names()
    assert "ce" in names
    for name in names:
        config = load_config(mapping={"method": name})
        assert config.method == name and config.stages, name
        for stage in config.stages:
            stage_kind(stage.kind)  # raises on an unknown kind
        assert load_config(mapping=to_dict(config)) == config, name


def test_multistep_warmup_schedule_matches_the_reference_code():
    s = ScheduleConfig(name="multistep", warmup_epochs=5, milestones=[160, 180], gamma=0.1)
    factors = [epoch_factor(s, e, 200, 0.1) for e in (0, 4, 5, 159, 160, 179, 180, 199)]
    assert factors == pytest.approx([0.2, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_starts_at_one_and_decays_towards_zero():
    s = ScheduleConfig(name="cosine")
    table = factor_table(s, epochs=4, steps_per_epoch=2, base_lr=0.01)
    # PyTorch CosineAnnealingLR stepped per epoch: (1 + cos(pi e / E)) / 2
    assert table.tolist() == pytest.approx([1, 1, 0.853553, 0.853553, 0.5, 0.5, 0.146447, 0.146447], abs=1e-6)


def test_a_config_file_overrides_one_value_inside_the_stages_list(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("method: ce\noverrides: [stages.0.epochs=190, stages.0.loss.name=focal]\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\noverrides: ['stages.0.loss={name: equalization, threshold: 0.02}']\n")
    config = load_config(child, ["stages.0.batch_size=32"])
    assert config.stages[0].epochs == 190 and config.stages[0].batch_size == 32
    assert config.stages[0].loss == {"name": "equalization", "threshold": 0.02}
    assert config.stages[0].optimizer.lr == 0.1  # the rest of the recipe's stage is kept
    (tmp_path / "bad.yaml").write_text("method: ce\noverrides: [stages.0.epoch=3]\n")
    with pytest.raises(ConfigError, match="closest|epochs"):
        load_config(tmp_path / "bad.yaml")


def test_init_from_and_shift_bn_given_as_options_move_to_their_stage_fields(tmp_path):
    """Older configs gave the engine settings init_from / shift_bn as stage options: they are read
    into the fields (with a warning naming the new key), and a run folder written that way still
    matches the same config written the new way."""
    import yaml

    from longtail.config import read_run_config
    from longtail.engine.runner import check_bound

    with pytest.warns(FutureWarning) as caught:
        old = load_config(mapping={"method": "mislas"}, overrides=["stages.1.options.shift_bn=false",
                                                                   "stages.0.options={init_from: w.pt}"])
    assert sorted(str(w.message).split(";")[0] for w in caught) == [
        "stages.0.options.init_from is now stages.0.init_from", "stages.1.options.shift_bn is now stages.1.shift_bn"]
    new = load_config(mapping={"method": "mislas"}, overrides=["stages.1.shift_bn=false", "stages.0.init_from=w.pt"])
    assert (old.stages[1].shift_bn, old.stages[0].init_from) == (False, "w.pt") and old.stages[1].options == {}
    assert to_dict(old) == to_dict(new)
    assert load_config(mapping={"method": "mislas"}).stages[1].shift_bn is True  # the recipe's own setting
    folder = tmp_path / "run"
    folder.mkdir()
    written = to_dict(new)  # as a run folder of the older schema recorded it:
    for stage in written["stages"]:
        stage["options"].update({key: stage.pop(key) for key in ("init_from", "shift_bn")})
    (folder / "config.yaml").write_text(yaml.safe_dump(written))
    (folder / "results.json").write_text("{}")
    assert to_dict(read_run_config(folder / "config.yaml")) == to_dict(new)
    check_bound(folder, new)  # the same config: accepted
    with pytest.raises(ConfigError, match=r"stages.1.shift_bn: False -> True"):
        check_bound(folder, load_config(mapping={"method": "mislas"}, overrides=["stages.0.init_from=w.pt"]))
