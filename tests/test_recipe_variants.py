"""Variant recipes (``method: <parent>`` + ``name`` + ``overrides``) keep the difference that defines them.

A variant is written as its parent recipe plus a few overrides, so a change to the parent changes the
variant too. Read from the recipe files themselves (no setting restated here), every variant

1. is a variant as the loader means it: ``method``/``name``/``overrides`` (and ``data``) only, on a
   parent that is a full recipe (one level of ``method:``);
2. differs from its resolved parent only under the settings its overrides (and ``data``) name, and
   under its own name;
3. differs from its parent under every one of them: a parent edit that makes an override a no-op (the
   row silently becomes the parent in that respect) is caught.

The few row-defining facts below them are the papers', checked on the resolved configs. No training:
configs are only loaded.
"""
from __future__ import annotations

from importlib import resources

import pytest
import yaml

from longtail.config import load_config, method_names, parse_override, to_dict


def _resolved(method: str) -> dict:
    return to_dict(load_config(mapping={"method": method}))


def _raw(method: str) -> dict:
    path = resources.files("longtail") / "recipes" / f"{method}.yaml"
    return yaml.safe_load(path.read_text()) or {}


VARIANTS = sorted(m for m in method_names() if "method" in _raw(m))
_MISSING = object()


def _get(tree, path: tuple[str, ...]):
    node = tree
    for part in path:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _leaves(tree, prefix: tuple[str, ...] = ()):
    """Every leaf path of a resolved config (list items by index), with its value."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if not items:  # a leaf, or an empty dict / list
        yield prefix, tree
        return
    for key, value in items:
        yield from _leaves(value, (*prefix, str(key)))


def _defining_paths(variant: str) -> list[tuple[str, ...]]:
    """The settings the variant's file changes: its overrides' keys and its ``data`` keys."""
    raw = _raw(variant)
    paths = [tuple(parse_override(text)[0]) for text in raw.get("overrides", [])]
    return paths + [("data", key) for key in raw.get("data") or {}]


def test_the_recipes_hold_variants():
    assert VARIANTS and all(v in method_names() for v in VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_file_is_a_full_recipe_plus_overrides(variant):
    raw = _raw(variant)
    assert raw["name"] == variant and raw["method"] in method_names()
    assert set(raw) <= {"method", "name", "overrides", "data"}, "stages are changed through overrides only"
    assert "method" not in _raw(raw["method"]), f"{raw['method']} must be a full recipe (one level of method: at most)"
    assert _defining_paths(variant), "a variant changes at least one setting of its parent"


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_differs_from_its_parent_exactly_where_its_file_says(variant):
    parent = _resolved(_raw(variant)["method"])
    resolved = _resolved(variant)
    assert (resolved["name"], resolved["method"]) == (variant, variant)
    defining = _defining_paths(variant)
    for path in defining:  # every change is one: no override has become the parent's value
        assert _get(resolved, path) != _get(parent, path), f"{variant}: {'.'.join(path)} is the parent's too"
    parent_leaves, variant_leaves = dict(_leaves(parent)), dict(_leaves(resolved))
    changed = {p for p in parent_leaves.keys() | variant_leaves.keys()
               if parent_leaves.get(p, _MISSING) != variant_leaves.get(p, _MISSING)} - {("name",), ("method",)}
    unexplained = sorted(".".join(p) for p in changed if not any(p[:len(d)] == d for d in defining))
    assert not unexplained, f"{variant} differs from its parent where its file changes nothing"


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
