"""Data parallelism on the CPU (gloo, two spawned ranks): the ranks stay in step, and two ranks that
each train on half of every batch take exactly the steps one process takes on the whole batch."""
import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import longtail.engine.runner as runner
from longtail.config import load_config
from longtail.data.dataset import ArraySplit, LongTailedDataset
from longtail.data.sampling import StrategySampler
from longtail.engine.distributed import World
from longtail.engine.file_source import RankSlices
from longtail.errors import ConfigError

COUNTS = [40, 20, 10, 6]


def features(_config=None) -> LongTailedDataset:
    """4 Gaussian clusters of 8-d features: a linear head, no BatchNorm, so the comparison is exact."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 8))

    def make(counts):
        y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
        return ArraySplit((centres[y] + rng.normal(0, 0.8, (len(y), 8))).astype(np.float32), y)

    return LongTailedDataset("features", 4, list("abcd"), make(COUNTS), make([10] * 4), meta={"source": "test"})


def config(out):
    return load_config(mapping={"method": "ce", "name": "ddp"}, overrides=[
        f"output_dir={out}", "engine.progress=false", "engine.checkpoint_every=0", "stages.0.epochs=3",
        "stages.0.batch_size=16", "stages.0.augment=none", "stages.0.schedule.milestones=[]", "stages.0.schedule.warmup_epochs=0",
    ])


def _rank(rank, port, out, results_dir):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    runner.load_dataset = features
    results = runner.run_config(config(out))
    (results_dir / f"rank{rank}.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_take_the_steps_of_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", features)
    single = runner.run_config(config(tmp_path / "single"))
    mp.spawn(_rank, args=(_free_port(), tmp_path / "ddp", tmp_path), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["test"] == ranks[1]["test"] and ranks[0]["weight_norms"] == ranks[1]["weight_norms"]
    np.testing.assert_allclose(ranks[0]["weight_norms"], single["weight_norms"], rtol=1e-5)
    assert ranks[0]["test"]["confusion"] == single["test"]["confusion"]
    assert (tmp_path / "ddp" / "ddp" / "seed0" / "results.json").is_file()  # rank 0 wrote the run folder
    assert ranks[0]["env"]["runtime"]["world_size"] == 2


def test_rank_slices_cover_each_global_batch_once():
    sampler = StrategySampler(torch.arange(12) % 3, "instance", num_samples=12)
    torch.manual_seed(0)
    whole = list(sampler)
    slices = []
    for rank in (0, 1):
        torch.manual_seed(0)
        slices.append(list(RankSlices(sampler, 6, World(rank, 2, rank))))
    for step in range(2):
        assert slices[0][3 * step:3 * step + 3] + slices[1][3 * step:3 * step + 3] == whole[6 * step:6 * step + 6]
    with pytest.raises(ConfigError, match="multiple of 2"):
        World(0, 2).shard(5)


def test_each_rank_of_a_device_source_gets_its_slice_of_the_global_batch():
    from longtail.data.sampling import build_sampler
    from longtail.engine.sources import DeviceSource

    x = torch.arange(24, dtype=torch.float32).view(12, 2)
    y = torch.arange(12) % 3

    def first_batch(world):
        torch.manual_seed(0)
        source = DeviceSource(x, y, 3, build_sampler("instance"), 6, 1, world=world)
        source.start_epoch(0)
        return source.next()[0]

    whole = first_batch(World())
    halves = [first_batch(World(rank, 2, rank)) for rank in (0, 1)]
    assert halves[0].shape == (3, 2)
    torch.testing.assert_close(torch.cat(halves), whole)


def _ghm_cwap_rank(rank, port, logits, targets, results_dir):
    import os

    import torch.distributed as dist

    from longtail.losses.ghm_cwap import GHMCWAPLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    loss = GHMCWAPLoss(COUNTS, num_regions=5, regions="aura", histogram="epoch")
    half = logits.shape[0] // 2
    loss(logits[rank * half : (rank + 1) * half], targets[rank * half : (rank + 1) * half])
    loss.on_epoch_end()
    torch.save({"hist": loss.hist, "edges_cur": loss.edges_cur}, results_dir / f"ghm{rank}.pt")
    dist.destroy_process_group()


def test_ghm_cwap_histograms_are_summed_over_ranks(tmp_path):
    """Two ranks that each see half of an epoch roll the histogram (and AURA widths) of the whole
    epoch, as one process that sees all of it."""
    from longtail.losses.ghm_cwap import GHMCWAPLoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=generator) * 3
    targets = torch.randint(0, 4, (64,), generator=generator)
    single = GHMCWAPLoss(COUNTS, num_regions=5, regions="aura", histogram="epoch")
    single(logits, targets)
    single.on_epoch_end()
    mp.spawn(_ghm_cwap_rank, args=(_free_port(), logits, targets, tmp_path), nprocs=2)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"ghm{rank}.pt")
        torch.testing.assert_close(state["hist"], single.hist)
        torch.testing.assert_close(state["edges_cur"], single.edges_cur)
    assert single.hist.sum() == 64


# ---------------------------------------------------------------- DistributedDataParallel, SyncBatchNorm


def images(_config=None) -> LongTailedDataset:
    from tests.conftest import tiny_dataset

    return tiny_dataset()


def bn_config(out, *extra):
    return load_config(mapping={"method": "ce", "name": "ddp_bn"}, overrides=[
        f"output_dir={out}", "engine.progress=false", "engine.checkpoint_every=1", "stages.0.epochs=2",
        "stages.0.batch_size=16", "stages.0.schedule.milestones=[]", "stages.0.schedule.warmup_epochs=0",
        "model.encoder=resnet20", *extra,
    ])


def _bn_rank(rank, port, out, results_dir):
    import os

    import longtail.engine.distributed as distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    runner.load_dataset = images
    wrapped = []
    real = distributed.DistributedDataParallel

    def counting(module, **options):
        wrapped.append(options)
        return real(module, **options)

    distributed.DistributedDataParallel = counting
    results = runner.run_config(bn_config(out))
    results["ddp_wrapped"] = [{k: v for k, v in w.items() if k != "device_ids"} for w in wrapped]
    (results_dir / f"bn{rank}.json").write_text(json.dumps(results))


def test_the_eager_distributed_step_runs_through_ddp_and_the_ranks_agree_with_batchnorm(tmp_path):
    """A BatchNorm network under two ranks: each stage's step runs through DistributedDataParallel,
    every rank ends with the same model (BatchNorm statistics included), results.json names the
    path, and the checkpoint holds the unwrapped model (no ``module.`` prefix)."""
    mp.spawn(_bn_rank, args=(_free_port(), tmp_path / "ddp", tmp_path), nprocs=2)
    ranks = [json.loads((tmp_path / f"bn{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["ddp_wrapped"] == [{"static_graph": True, "find_unused_parameters": False}]
    assert ranks[0]["distributed"] == {"world_size": 2, "path": "ddp"}
    assert ranks[0]["test"] == ranks[1]["test"] and ranks[0]["weight_norms"] == ranks[1]["weight_norms"]
    checkpoint = torch.load(tmp_path / "ddp" / "ddp_bn" / "seed0" / "stage0_stage1.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    assert any(key.endswith("running_mean") for key in checkpoint["model"])


def test_a_single_process_records_its_path(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", features)
    assert runner.run_config(config(tmp_path))["distributed"] == {"world_size": 1, "path": "single"}


def test_sync_batchnorm_converts_every_batchnorm_and_keeps_parameters_and_keys():
    from longtail.engine.distributed import sync_batchnorm
    from longtail.models.factory import build_model

    model = build_model("resnet20", 4)
    before = model.state_dict()
    params = {name: id(p) for name, p in model.named_parameters()}
    converted = sync_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in converted.modules())
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) > 0
    assert list(converted.state_dict()) == list(before)  # checkpoints load either way
    assert {name: id(p) for name, p in converted.named_parameters()} == params


def test_sync_batchnorm_on_the_cpu_under_torchrun_names_the_fix(monkeypatch):
    import longtail.engine.device as device
    from longtail.config import EngineConfig

    monkeypatch.setattr(device, "init_world", lambda backend: World(0, 2, 0))
    with pytest.raises(ConfigError, match="engine.sync_batchnorm needs CUDA.*engine.sync_batchnorm=false"):
        device.Runtime.resolve(EngineConfig(device="cpu", sync_batchnorm=True))
    assert device.Runtime.resolve(EngineConfig(device="cpu")).sync_batchnorm is False
    monkeypatch.setattr(device, "init_world", lambda backend: World())
    assert device.Runtime.resolve(EngineConfig(device="cpu", sync_batchnorm=True)).sync_batchnorm is False  # one process: nothing to sync


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm runs on CUDA only (torch refuses CPU tensors) "
                                                          "and two NCCL ranks need two GPUs")
def test_two_gpu_ranks_with_sync_batchnorm(tmp_path):
    mp.spawn(_syncbn_rank, args=(_free_port(), tmp_path / "ddp", tmp_path), nprocs=2)
    ranks = [json.loads((tmp_path / f"sbn{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["distributed"] == {"world_size": 2, "path": "ddp+syncbn"}
    assert ranks[0]["test"] == ranks[1]["test"]


def _syncbn_rank(rank, port, out, results_dir):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    runner.load_dataset = images
    results = runner.run_config(bn_config(out, "engine.device=cuda", "engine.sync_batchnorm=true"))
    (results_dir / f"sbn{rank}.json").write_text(json.dumps(results))
