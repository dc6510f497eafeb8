"""Your own data (data/user.py): a small, naturally imbalanced CSV through `longtail train`, the
validation hold-out rule, and the clear errors."""
import json

import numpy as np
import pytest
import torch

import longtail.data.user as user
from longtail.cli import main
from longtail.config import DataConfig
from longtail.errors import DataError

CSV = "tests/data/tiny_natural.csv"  # weather 60 / sports 25 / cooking 10 / music 5 / astronomy 2 (+6 test each)


class WordEmbedder:
    """Cheap deterministic features: counts of a fixed vocabulary."""

    name = "word-count-embedder-v1"
    vocab = "rain sunny cloud storm wind forecast goal match team score league coach recipe oven bake salt pan dinner " \
            "guitar song band chord album drum star planet telescope orbit comet galaxy".split()

    def __call__(self, texts):
        return np.array([[t.split().count(w) for w in self.vocab] for t in texts], np.float32)


def config(tmp_path, **kw):
    return DataConfig(dataset="text", train_file=CSV, split_column="split", cache_dir=str(tmp_path / "emb"), **kw)


def test_text_csv_natural_counts_and_names(tmp_path):
    ds = user.build_text_dataset(config(tmp_path), embedder=WordEmbedder())
    assert ds.class_names == ["astronomy", "cooking", "music", "sports", "weather"]
    assert np.bincount(ds.train.y).tolist() == [2, 10, 5, 25, 60]
    assert len(ds.test) == 30 and ds.meta["imbalance"] == 30.0


def test_holdout_takes_at_most_a_fifth_and_nothing_from_small_classes():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 5 + [3] * 4 + [4])
    val, train = user.holdout_validation(labels, per_class=20, seed=0)
    assert np.bincount(labels[val], minlength=5).tolist() == [10, 2, 1, 0, 0]  # floor(20 %), capped at per_class
    assert np.bincount(labels[train], minlength=5).tolist() == [40, 8, 4, 4, 1]
    assert not set(val) & set(train) and len(val) + len(train) == labels.size


def test_holdout_keeps_every_class_trainable_on_a_natural_tail(tmp_path):
    counts = [600, 40, 13, 7, 4, 3, 2, 1, 1]  # a natural tail with one-item classes
    y = np.repeat(np.arange(len(counts)), counts)
    for per_class in (1, 5, 20, 1000):
        val, train = user.holdout_validation(y, per_class=per_class, seed=3)
        kept = np.bincount(y[train], minlength=len(counts))
        assert (kept >= np.ceil(0.8 * np.array(counts))).all() and (kept >= 1).all()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", features=rng.normal(size=(y.size + 9, 4)), labels=np.concatenate([y, np.arange(9)]),
             split=["train"] * y.size + ["test"] * 9)
    cfg = DataConfig(dataset="features", train_file=str(tmp_path / "f.npz"), val_per_class=20)
    with pytest.warns(UserWarning, match=r"5 of 9 classes are too small .*: 4 \(4\), 5 \(3\), 6 \(2\), 7 \(1\), 8 \(1\)"):
        ds = user.build_features_dataset(cfg)
    policy = ds.meta["val_policy"]
    assert policy["val_counts"] == [20, 8, 2, 1, 0, 0, 0, 0, 0] and policy["max_fraction"] == 0.2
    assert policy["classes_without_val"] == ["4", "5", "6", "7", "8"]
    assert ds.meta["train_counts"] == [580, 32, 11, 6, 4, 3, 2, 1, 1]


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no column 'body'"):
        user.build_text_dataset(config(tmp_path, text_column="body"), embedder=WordEmbedder())
    bad = tmp_path / "bad.csv"
    bad.write_text("split,label,text\ntrain,a,x\ntest,a,x\ntest,b,y\n")
    with pytest.raises(DataError, match=r"test classes \['b'\] have no training item"):
        user.build_text_dataset(DataConfig(dataset="text", train_file=str(bad), split_column="split",
                                           cache_dir=None), embedder=WordEmbedder())
    np.savez(tmp_path / "tr.npz", features=np.zeros((4, 3)), labels=[0, 1, 0, 1])
    np.savez(tmp_path / "te.npz", features=np.zeros((2, 5)), labels=[0, 1])
    with pytest.raises(DataError, match="mixed feature dimensions"):
        user.build_features_dataset(DataConfig(dataset="features", train_file=str(tmp_path / "tr.npz"),
                                               test_file=str(tmp_path / "te.npz")))


def test_features_npz_with_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", features=rng.normal(size=(12, 4)), labels=[0] * 6 + [1] * 3 + [2] * 3,
             split=["train"] * 4 + ["test"] * 2 + ["train"] * 2 + ["test"] + ["train", "train", "test"])
    ds = user.build_features_dataset(DataConfig(dataset="features", train_file=str(tmp_path / "f.npz")))
    assert np.bincount(ds.train.y).tolist() == [4, 2, 2] and ds.val is None and len(ds.test) == 4
    with pytest.raises(DataError, match="val_per_class=1 held out nothing"):  # no class of 5 or more items
        user.build_features_dataset(DataConfig(dataset="features", train_file=str(tmp_path / "f.npz"), val_per_class=1))


def test_train_cli_end_to_end_reports_macro(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(user, "make_embedder", lambda name: WordEmbedder())
    args = ["train", f"output_dir={tmp_path}", "name=own", "data.dataset=text", f"data.train_file={CSV}",
            "data.split_column=split", f"data.cache_dir={tmp_path / 'emb'}", "model.encoder=identity",
            "stages.0.epochs=30", "stages.0.batch_size=16", "stages.0.augment=none", "stages.0.optimizer.lr=0.5",
            "engine.progress=false", "--threads", "2"]
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    assert "astronomy" in capsys.readouterr().out  # class names in the report
    assert "cpu_threads: 2" in (tmp_path / "own" / "seed0" / "config.yaml").read_text()  # --threads
    results = json.loads((tmp_path / "own" / "seed0" / "results.json").read_text())
    text = json.dumps(results)
    assert "macro_accuracy" in text and "macro_f1" in text
    assert results["class_names"] == ["astronomy", "cooking", "music", "sports", "weather"]


def test_text_table_on_own_data(tmp_path, monkeypatch):
    from longtail.bench import text_table

    monkeypatch.setattr(user, "make_embedder", lambda name: WordEmbedder())
    configs = tmp_path / "configs"
    configs.mkdir()
    stage = ("stages:\n  - {name: stage1, epochs: 20, batch_size: 16, sampler: {name: instance}, augment: none, "
             "loss: {name: %s}, optimizer: {lr: 0.5, momentum: 0.9, weight_decay: 5.0e-4}}\n")
    data = (f"data: {{dataset: text, train_file: {CSV}, split_column: split, cache_dir: {tmp_path / 'emb'}}}\n"
            "model: {encoder: identity, head: linear}\n")
    (configs / "ce.yaml").write_text("name: own_ce\n" + data + stage % "ce")
    (configs / "bs.yaml").write_text("name: own_bs\n" + data + stage % "balanced_softmax")
    argv = ["--configs", str(configs), "--seeds", "0", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]
    assert text_table.main(argv) == 0
    record = json.loads((tmp_path / "res" / "tiny_natural.json").read_text())
    assert [r["method"] for r in record["rows"]] == ["bs", "ce"]
    assert all(r["macro_accuracy"] is not None and r["macro_f1"] is not None for r in record["rows"])
    md = (tmp_path / "res" / "tiny_natural.md").read_text()
    assert md.startswith("# tiny_natural: 5 classes, imbalance 30") and "macro F1" in md


def test_integer_labels_sort_numerically_and_npy_dict(tmp_path):
    labels = [10, 2, 2, 1, 1, 1, 10, 2, 1]
    np.save(tmp_path / "f.npy", {"features": np.eye(9, 3), "labels": labels, "split": ["train"] * 6 + ["test"] * 3})
    ds = user.build_features_dataset(DataConfig(dataset="features", train_file=str(tmp_path / "f.npy")))
    assert ds.class_names == ["1", "2", "10"] and np.bincount(ds.train.y).tolist() == [3, 2, 1]


@pytest.mark.parametrize("layout", ["list_column", "numeric_columns"])
def test_features_parquet_reads_as_the_npz(tmp_path, layout):
    """The same table as .npz and as .parquet (features as one list column, or one column per
    dimension) gives the same dataset."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    labels = ["b"] * 6 + ["a"] * 3 + ["c"] * 3
    split = ["train"] * 4 + ["test"] * 2 + ["train"] * 2 + ["test"] + ["train", "train", "test"]
    np.savez(tmp_path / "f.npz", features=x, labels=labels, split=split)
    columns = ({"features": pa.array(x.tolist(), pa.list_(pa.float32()))} if layout == "list_column"
               else {f"f{d}": x[:, d] for d in range(4)})
    pq.write_table(pa.table({**columns, "label": labels, "split": split}), tmp_path / "f.parquet")
    a = user.build_features_dataset(DataConfig(dataset="features", train_file=str(tmp_path / "f.npz")))
    b = user.build_features_dataset(DataConfig(dataset="features", train_file=str(tmp_path / "f.parquet")))
    assert a.class_names == b.class_names
    np.testing.assert_array_equal(a.train.y, b.train.y)
    np.testing.assert_allclose(np.asarray(a.train.x), np.asarray(b.train.x))
    np.testing.assert_allclose(np.asarray(a.test.x), np.asarray(b.test.x))


def test_parquet_without_labels_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"f0": [0.0, 1.0]}), tmp_path / "f.parquet")
    with pytest.raises(DataError, match="no 'labels'"):
        user.build_features_dataset(DataConfig(dataset="features", train_file=str(tmp_path / "f.parquet")))


def test_headerless_tsv_by_position_and_short_error(tmp_path):
    long_doc = "the forecast says rain and wind all week " * 20
    rows = [("train", "weather", long_doc)] * 3 + [("train", "music", "guitar song band")] * 2 + \
        [("test", "weather", "rain"), ("test", "music", "song")]
    tsv = tmp_path / "plain.tsv"
    tsv.write_text("".join(f"{s}\t{y}\t{t}\n" for s, y, t in rows))
    by_name = DataConfig(dataset="text", train_file=str(tsv), split_column="split", cache_dir=None)
    with pytest.raises(DataError) as err:  # the first document is not a column name
        user.build_text_dataset(by_name, embedder=WordEmbedder())
    assert "data.header=false" in str(err.value) and len(str(err.value)) < 400
    for header in (False, None):  # explicit, and auto (positions given: no header line)
        cfg = DataConfig(dataset="text", train_file=str(tsv), header=header, split_column=0, label_column=1,
                         text_column=2, cache_dir=None)
        ds = user.build_text_dataset(cfg, embedder=WordEmbedder())
        assert ds.class_names == ["music", "weather"] and np.bincount(ds.train.y).tolist() == [2, 3]
        assert len(ds.test) == 2 and ds.name == "plain"


def test_unescape_option_and_data_name(tmp_path):
    assert user.unescape(r"a\nb\tc\\n é \x") == "a\nb\tc\\n é \\x"
    seen = []

    class Recorder(WordEmbedder):
        def __call__(self, texts):
            seen.extend(texts)
            return super().__call__(texts)

    csv_file = tmp_path / "esc.csv"
    csv_file.write_text("split,label,text\n" + "train,a,rain\\nwind\n" * 2 + "train,b,song\n" + "test,a,x\\ny\ntest,b,y\n")
    for flag, want in ((False, "rain\\nwind"), (True, "rain\nwind")):
        seen.clear()
        cfg = DataConfig(dataset="text", train_file=str(csv_file), split_column="split", cache_dir=None,
                         unescape=flag, name="mine" if flag else None)
        ds = user.build_text_dataset(cfg, embedder=Recorder())
        assert seen[0] == want and ds.name == ("mine" if flag else "esc")
