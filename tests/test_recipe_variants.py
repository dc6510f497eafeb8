"""Variant recipes (``method: <parent>`` + ``name`` + ``overrides``) keep the difference that defines them.

Each variant below is written as its parent recipe plus a few overrides, so a change to the parent
changes the variant too. These tests pin, for every such variant, the settings that define its row
(written out here, not read from the variant's file) and check that

1. the resolved variant is exactly the resolved parent with those settings changed (and its own name):
   nothing else differs, so a parent edit that the variant's overrides would clobber is caught;
2. each defining setting really differs from the parent's, so a parent edit that makes the variant's
   change a no-op (the row silently becomes the parent) is caught;
3. the files keep the shape: a short header, ``method``/``name``/``overrides`` only, a parent that is a
   full recipe (one level of ``method:``), and a parent header that names the variant.

No training: configs are only loaded.
"""
from __future__ import annotations

import copy
from importlib import resources

import pytest
import yaml

from longtail.config import load_config, method_names, to_dict

DROP = object()  # the key is absent from the variant (present in the parent)

CB_FOCAL = {"name": "cb_sigmoid_focal", "beta": 0.9999, "gamma": 2.0}
LAS = {"name": "label_aware_smoothing", "smooth_head": 0.4, "smooth_tail": 0.1, "shape": "concave"}
GRALOSS = {"name": "graloss", "s": 1.0, "c": 2.0, "schedule": "convex"}
LOGIT_ADJUSTED = {"name": "logit_adjusted", "tau": 1.0}
CLASS_BALANCED = {"name": "class_balanced"}
DRS = {"name": "drs", "start_epoch": 160}

# variant -> (parent, {path in the resolved config: the variant's value (DROP: key removed)})
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    # IWB (Dang et al. 2024): Table 1 'IWB(ours)', Table 3/4 ablations, the released code's choices
    "iwb_ce": ("iwb", {"stages.1.loss.base": "ce", "stages.1.loss.base_options": DROP}),
    "iwb_mse": ("iwb", {"stages.1.loss.divergence": "mse"}),
    "iwb_nc_only": ("iwb", {"stages.1.loss.nc_only": True}),
    "iwb_hc_scalar": ("iwb", {"stages.1.loss.hc": "scalar"}),
    "iwb_whole_network": ("iwb", {"stages.1.train": "all", "stages.1.features": "online",
                                  "stages.1.augment": "crop_flip"}),
    "iwb_code": ("iwb", {"stages.1.train": "all", "stages.1.features": "online", "stages.1.augment": "crop_flip",
                         "stages.1.loss.lam": 0.01, "stages.1.loss.base": "cb_softmax_bce",
                         "stages.1.loss.log_base": 2.718281828459045,
                         "stages.1.loss.kl_direction": "code_reversed_sum"}),
    # BWLM (Fan et al. 2024) Table 2 ablation rows: stage-2 loss, with (W) or without classifier decay
    "bwlm_ce": ("bwlm", {"stages.1.loss": {"name": "ce"}, "stages.1.optimizer.weight_decay": 0.0}),
    "bwlm_cew": ("bwlm", {"stages.1.loss": {"name": "ce"}}),
    "bwlm_cb": ("bwlm", {"stages.1.loss": CB_FOCAL, "stages.1.optimizer.weight_decay": 0.0}),
    "bwlm_cbw": ("bwlm", {"stages.1.loss": CB_FOCAL}),
    "bwlm_bs": ("bwlm", {"stages.1.loss": {"name": "balanced_softmax"}, "stages.1.optimizer.weight_decay": 0.0}),
    "bwlm_bsw": ("bwlm", {"stages.1.loss": {"name": "balanced_softmax"}}),
    "bwlm_bfs": ("bwlm", {"stages.1.optimizer.weight_decay": 0.0}),
    "bwlm_stage1_all": ("bwlm", {"stages.0.kind": "supervised"}),
    # GLAG (Zhang & Xiang) Table 7 rows
    "glag_no_ad": ("glag", {"stages.1.options.adaptive_beta": False}),
    "glag_no_kd": ("glag", {"stages.1.options.kd": False}),
    "glag_ce_ad_kd": ("glag", {"stages.0.loss": {"name": "ce"}}),
    "glag_logitloss_ad_kd": ("glag", {"stages.0.loss": LOGIT_ADJUSTED}),
    "glag_ce": ("graloss", {"stages.0.loss": {"name": "ce"}}),
    "glag_logitloss": ("graloss", {"stages.0.loss": LOGIT_ADJUSTED}),
    "graloss_crt": ("crt", {"stages.0.loss": GRALOSS}),
    "graloss_lws": ("lws", {"stages.0.loss": GRALOSS}),
    "graloss_mislas": ("mislas", {"stages.0.loss": GRALOSS}),
    # GHM-CWAP Table 3 rows (caption labels)
    "ghm_cwap_a_ura": ("ghm_cwap", {"stages.0.loss.intra": False, "stages.0.loss.inter": True,
                                    "stages.0.loss.regions": "ura"}),
    "ghm_cwap_r": ("ghm_cwap", {"stages.0.loss.intra": True, "stages.0.loss.inter": False,
                                "stages.0.loss.regions": "ura"}),
    "ghm_cwap_r_a_ura": ("ghm_cwap", {"stages.0.loss.intra": True, "stages.0.loss.inter": True,
                                      "stages.0.loss.regions": "ura"}),
    # LADC (Wang et al. 2022) Tables 6, 8, 9 and our ablations
    "ladc_average": ("ladc", {"stages.1.options.calibration": "average"}),
    "ladc_crt": ("ladc", {"stages.1.head": "linear"}),
    "ladc_lws": ("ladc", {"stages.1.head": "lws"}),
    "ladc_dc": ("ladc", {"stages.1.options": {"calibration": "dc", "head_fraction": 0.6, "m": 2, "tau": 1.2}}),
    "ladc_no_re": ("ladc", {"stages.0.augment": "crop_flip", "stages.0.mixing": None}),
    "ladc_class_sampling": ("ladc", {"stages.1.options.sampling_level": "class"}),
    "ladc_cbs_crt": ("ladc", {"stages.1.name": "cbs_crt", "stages.1.kind": "supervised", "stages.1.head": "linear",
                              "stages.1.sampler": CLASS_BALANCED, "stages.1.options": {}}),
    "ladc_cbs_lws": ("ladc", {"stages.1.name": "cbs_lws", "stages.1.kind": "supervised", "stages.1.head": "lws",
                              "stages.1.sampler": CLASS_BALANCED, "stages.1.options": {}}),
    "ladc_las_crt": ("ladc", {"stages.1.name": "las_crt", "stages.1.kind": "supervised", "stages.1.head": "linear",
                              "stages.1.sampler": CLASS_BALANCED, "stages.1.loss": LAS, "stages.1.options": {}}),
    "ladc_las_lws": ("ladc", {"stages.1.name": "las_lws", "stages.1.kind": "supervised", "stages.1.head": "lws",
                              "stages.1.sampler": CLASS_BALANCED, "stages.1.loss": LAS, "stages.1.options": {}}),
    # weight balancing (Alshammari et al. 2022) as IWB's Table 1 baselines
    "wd_maxnorm_cb": ("wd_maxnorm", {"stages.1.name": "maxnorm_cb",
                                     "stages.1.loss": {"name": "cb_ce", "beta": 0.9999}}),
    "wd_maxnorm_cb_bce": ("wd_maxnorm", {"stages.1.name": "maxnorm_cb",
                                         "stages.1.loss": {"name": "cb_softmax_bce", "beta": 0.9999}}),
    # one building block on the standard CIFAR-LT recipe (the ce recipe)
    "ce_autoaugment": ("ce", {"stages.0.augment": "autoaugment"}),
    "ce_randaugment": ("ce", {"stages.0.augment": "randaugment"}),
    "ce_cbs": ("ce", {"stages.0.sampler": CLASS_BALANCED}),
    "ce_sqrt": ("ce", {"stages.0.sampler": {"name": "sqrt"}}),
    "ce_progressive": ("ce", {"stages.0.sampler": {"name": "progressive"}}),
    "mixup": ("ce", {"stages.0.mixing": {"name": "mixup", "alpha": 1.0}}),
    "remix": ("ce", {"stages.0.mixing": {"name": "remix", "alpha": 1.0, "kappa": 3.0, "tau": 0.5}}),
    "cb_softmax_focal": ("ce", {"stages.0.loss": {"name": "cb_focal", "beta": 0.9999, "gamma": 1.0}}),
    # Cao et al. 2019: deferred re-weighting / re-sampling
    "ldam_drw": ("ldam", {"stages.0.loss": {"name": "drw", "base": "ldam", "start_epoch": 160, "beta": 0.9999}}),
    "ldam_drs": ("ldam", {"stages.0.sampler": DRS, "stages.0.loss.max_m": 0.5, "stages.0.loss.s": 30.0}),
    "ce_drs": ("ce_drw", {"stages.0.sampler": DRS, "stages.0.loss": {"name": "ce"}}),
    # Kang et al. 2020
    "tau_norm_val": ("tau_norm", {"stages.1.options": {}, "data.val_per_class": 20}),
}

_MISSING = object()


def _resolved(method: str) -> dict:
    return to_dict(load_config(mapping={"method": method}))


def _raw(method: str) -> dict:
    path = resources.files("longtail") / "recipes" / f"{method}.yaml"
    return yaml.safe_load(path.read_text()) or {}


def _get(tree, path: str):
    node = tree
    for part in path.split("."):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _set(tree, path: str, value) -> None:
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is DROP:
        del node[last]
    else:
        node[last] = copy.deepcopy(value)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_is_its_parent_with_only_the_defining_changes(variant):
    parent, changes = VARIANTS[variant]
    expected = _resolved(parent)
    for path, value in changes.items():
        _set(expected, path, value)
    expected["name"] = expected["method"] = variant
    assert _resolved(variant) == expected


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_defining_changes_differ_from_the_parent(variant):
    parent, changes = VARIANTS[variant]
    resolved_parent = _resolved(parent)
    for path, value in changes.items():
        before = _get(resolved_parent, path)
        if value is DROP:
            assert before is not _MISSING, f"{variant}: {path} is no longer in {parent}: nothing to drop"
        else:
            assert before != value, f"{variant}: {parent} now has {path}={value!r} too: the row no longer differs"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_file_is_parent_plus_overrides(variant):
    parent, _ = VARIANTS[variant]
    raw = _raw(variant)
    assert raw["method"] == parent and raw["name"] == variant
    assert set(raw) <= {"method", "name", "overrides", "data"}, "stages are changed through overrides only"
    assert "method" not in _raw(parent), f"{parent} must be a full recipe (one level of method: at most)"
    text = (resources.files("longtail") / "recipes" / f"{variant}.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("# ") and 1 <= len(header) <= 10, "a short header that says what differs and why"
    parent_text = (resources.files("longtail") / "recipes" / f"{parent}.yaml").read_text()
    assert variant in parent_text, f"{parent}.yaml's header lists its variants; {variant} is missing"


def test_every_recipe_written_as_a_variant_is_pinned_here():
    written = {m for m in method_names() if "method" in _raw(m)}
    assert written == set(VARIANTS), "add the new variant's defining settings to VARIANTS"


# A few row-defining facts spelled out, beyond "differs from the parent".
def test_iwb_rows_keep_cb_and_lambda_where_the_paper_does():
    for name in ("iwb_mse", "iwb_nc_only", "iwb_hc_scalar", "iwb_whole_network"):
        loss = load_config(mapping={"method": name}).stages[1].loss
        assert (loss["base"], loss["lam"], loss["base_options"]) == ("cb_ce", 0.15, {"beta": 0.9999}), name
    ce = load_config(mapping={"method": "iwb_ce"}).stages[1]
    assert ce.loss["base"] == "ce" and "base_options" not in ce.loss and ce.train == "head"


def test_bwlm_w_rows_keep_the_classifier_weight_decay_and_the_others_drop_it():
    for name in ("bwlm", "bwlm_cew", "bwlm_cbw", "bwlm_bsw"):
        assert load_config(mapping={"method": name}).stages[1].optimizer.weight_decay == 0.1, name
    for name in ("bwlm_ce", "bwlm_cb", "bwlm_bs", "bwlm_bfs"):
        assert load_config(mapping={"method": name}).stages[1].optimizer.weight_decay == 0.0, name


def test_ladc_table9_classifier_rows_are_plain_supervised_stages_on_ladc_schedule():
    ladc = load_config(mapping={"method": "ladc"}).stages[1]
    for name in ("ladc_cbs_crt", "ladc_cbs_lws", "ladc_las_crt", "ladc_las_lws"):
        stage = load_config(mapping={"method": name}).stages[1]
        assert (stage.kind, stage.options, stage.sampler) == ("supervised", {}, {"name": "class_balanced"}), name
        assert (stage.epochs, stage.batch_size, stage.optimizer, stage.schedule, stage.features) == (
            ladc.epochs, ladc.batch_size, ladc.optimizer, ladc.schedule, ladc.features), name
