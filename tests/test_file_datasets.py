"""File-backed datasets end to end on tiny generated PNGs: split files and class folders,
CE stage 1 streamed from disk by a DataLoader, then cRT on cached features."""
import dataclasses
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import longtail.engine.runner as runner
from longtail.config import DataConfig, load_config
from longtail.data.factory import load_dataset
from longtail.data.files import FileSplit
from longtail.engine.stages import stage_kind
from longtail.engine.trainer import Trainer
from longtail.errors import DataError

TRAIN_COUNTS = [12, 8, 4]
TEST_PER_CLASS = 4
COLOURS = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]


@pytest.fixture
def image_root(tmp_path):
    """root/{train,test}/c<k>/<i>.png (32×32, one colour per class plus noise) and train/test lists."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split, counts in (("train", TRAIN_COUNTS), ("test", [TEST_PER_CLASS] * 3)):
        lines = []
        for label, count in enumerate(counts):
            for i in range(count):
                rel = f"{split}/c{label}/{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                pixels = np.clip(np.array(COLOURS[label]) + rng.integers(-30, 30, (32, 32, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / rel)
                lines.append(f"{rel} {label}\n")
        (tmp_path / f"{split}.txt").write_text("".join(lines))
    return root


def config(tmp_path, image_root, workers=0, **data):
    return load_config(
        mapping={
            "name": "files",
            "output_dir": str(tmp_path / "runs"),
            "data": {"dataset": "splitfile", "root": str(image_root), "train_list": str(tmp_path / "train.txt"),
                     "test_list": str(tmp_path / "test.txt"), "image_size": 32, "workers": workers, **data},
            "model": {"encoder": "resnet10"},
            "stages": [
                {"name": "ce", "epochs": 2, "batch_size": 8, "optimizer": {"lr": 0.05}, "schedule": {"name": "constant"}},
                {"name": "crt", "train": "head", "head": "linear", "features": "cached", "epochs": 2, "batch_size": 8,
                 "augment": "none", "sampler": {"name": "class_balanced"}, "schedule": {"name": "constant"}},
            ],
            "eval": {"batch_size": 16},
            "engine": {"device": "cpu", "progress": False},
        }
    )


def test_splitfile_run_end_to_end(tmp_path, image_root):
    results = runner.run_config(config(tmp_path, image_root, workers=2))
    run_dir = tmp_path / "runs" / "files" / "seed0"
    for name in ("config.yaml", "env.json", "metrics.jsonl", "results.json", "stage0_ce.pt", "stage1_crt.pt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "results.json").read_text())["test"] == results["test"]
    assert results["class_counts"] == TRAIN_COUNTS  # from the training list, not the test list
    assert sum(results["test"]["group_sizes"].values()) == 3 and 0.0 <= results["test"]["top1"] <= 100.0
    assert [t["steps_per_epoch"] for t in results["timings"]] == [3, 3]
    meta = results["dataset_meta"]
    assert meta["split_sha256"]["train"] == hashlib.sha256((tmp_path / "train.txt").read_bytes()).hexdigest()
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(e["stage"], e["epoch"]) for e in epochs] == [("ce", 1), ("ce", 2), ("crt", 1), ("crt", 2)]


def test_streamed_stage_runs_eagerly_with_its_reason(tmp_path, image_root):
    run = runner.Run(config(tmp_path, image_root))
    ctx = run.build()
    assert isinstance(ctx.splits["train"][0], FileSplit) and ctx.splits["train"][1].tolist() == sorted(
        sum(([c] * n for c, n in enumerate(TRAIN_COUNTS)), [])
    )
    stage = run.config.stages[0]
    plan = stage_kind(stage.kind).build(ctx, stage)
    assert not plan.members[0].graph_safe and plan.members[0].graph_unsafe_reason == "images are streamed from disk by a DataLoader"
    trainer = Trainer(plan, dataclasses.replace(run.runtime, cuda_graph=True), progress=False)
    assert trainer.run_epoch(0)[0]["loss"] > 0  # the eager fallback (no capture is attempted)
    assert trainer.graph is None and trainer.fallback_reason == "images are streamed from disk by a DataLoader"
    plan.members[0].source.start_epoch(1)
    x, y = plan.members[0].source.next()
    assert x.shape == (8, 3, 32, 32) and x.dtype.is_floating_point and y.shape == (8,)
    assert ctx.features("test").shape == (12, 512)


def test_class_folder_dataset(image_root):
    dataset = load_dataset(DataConfig(dataset="folder", root=str(image_root), image_size=32, workers=0))
    assert dataset.class_names == ["c0", "c1", "c2"] and dataset.class_counts.tolist() == TRAIN_COUNTS
    assert dataset.val is None and len(dataset.test) == 12 and dataset.is_image
    image, label = dataset.train[0]
    assert label == 0 and image.size == (32, 32)


def test_missing_image_names_the_file(tmp_path, image_root):
    (image_root / "train/c1/3.png").unlink()
    with pytest.raises(DataError, match=r"missing image .*c1/3\.png"):
        runner.run_config(config(tmp_path, image_root))


def test_wrong_root_fails_before_training(tmp_path, image_root):
    with pytest.raises(DataError, match=r"missing image .*c0/0\.png .*set data\.root"):
        runner.run_config(config(tmp_path, image_root, root=str(tmp_path / "elsewhere")))


@pytest.mark.parametrize("key", ["train_list", "test_list"])
def test_missing_split_file(tmp_path, image_root, key):
    with pytest.raises(DataError, match=rf"data\.{key}: no split file at .*nope\.txt; set data\.{key}"):
        runner.run_config(config(tmp_path, image_root, **{key: str(tmp_path / "nope.txt")}))
    with pytest.raises(DataError, match=rf"needs data\.{key}"):
        runner.run_config(config(tmp_path, image_root, **{key: None}))
