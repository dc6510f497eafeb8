"""The packaged reproduction specs and the papers' figures: every matrix plans before any GPU time
is spent on it (configs and overrides load, decoupled methods find their shared stage 1), and
every paper row names a recipe, run by a spec where its dataset is benchmarked, with one figure
per imbalance factor."""
from pathlib import Path

import pytest
import yaml

from longtail.bench import reproduce
from longtail.config import method_names

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "benchmarks" / "specs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # specs name their configs relative to the repository root


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_every_packaged_spec_plans_with_shared_stage_ones(spec_path, tmp_path):
    spec = reproduce.load_spec(spec_path)
    jobs = reproduce.plan_jobs(spec, tmp_path)
    cells = [j for j in jobs if j.method in spec["methods"]]
    assert len(cells) == len(spec["methods"]) * len(spec["data"]) * len(spec["seeds"])
    for job in cells:
        assert job.config.seed in spec["seeds"] and job.config.name == job.method
        if len(job.config.stages) > 1 and not job.config.stages[0].init_from:
            provider = job.shared_stage1
            assert provider is not None and provider in jobs, job.method
            assert len(provider.config.stages) == 1
            assert reproduce._stage1_key(provider.config) == reproduce._stage1_key(job.config)


def test_every_paper_row_is_a_recipe_that_a_spec_runs():
    tables = yaml.safe_load((ROOT / "benchmarks" / "paper_numbers.yaml").read_text())
    specs = [reproduce.load_spec(p) for p in SPECS]
    covered = {s["dataset"] for s in specs}
    for table in tables:
        assert {"seed", "paper", "table"} <= set(table["source"])
        assert (ROOT.parent / "shared" / "seeds" / table["source"]["seed"]).exists() or not (ROOT.parent / "shared").exists()
        run = {m for s in specs if s["dataset"] == table["dataset"] for m in s["methods"]}
        for method, row in table["rows"].items():
            where = f"{table['source']['paper']} {table['source']['table']} ({table['dataset']})"
            assert method in method_names(), f"{where}: {method!r} is no recipe"
            if table["dataset"] in covered:  # a benchmarked dataset runs every row its papers report
                assert method in run, f"{where}: no spec runs {method!r}"
            assert len(row["top1"]) == len(table["imbalance_factors"]), (table["source"], method)
