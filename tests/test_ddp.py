"""The same fit() in two DDP processes on CPU (gloo, torch.multiprocessing.spawn), without Ray.

Checks: both ranks report identical metrics (throughput aside) and end with identical weights; they trained on
disjoint, equal-sized shards; rank 0 alone writes checkpoints; and, for a model without BatchNorm and without
augmentation, 2 ranks x batch b equal one process with batch 2 b (the same images per step, gradients averaged).
"""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import leukmodels.train as train_module
from leukmodels.config import TrainConfig
from leukmodels.data import DecodedSet

WORLD = 2


class NoBatchNorm(nn.Module):
    """Tiny model whose output for an image does not depend on the rest of its batch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)
        self.head = nn.Linear(6, 2)

    def forward(self, x):  # N x 3 x S x S
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))  # N x 2


def random_set(n, size, seed, first_patient=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    labels = (np.arange(n) % 3 != 0).astype(np.int64)  # 2/3 ALL
    images[labels == 1, 0] //= 2  # a learnable difference in the red channel
    patients = np.array([str(first_patient + i % 4) for i in range(n)])
    return DecodedSet(images, labels, patients, np.array([f"i{i}" for i in range(n)]), f"rand-{seed}")


def real_config(**changes):
    return TrainConfig(**{**dict(family="baseline", filters=4, depth=2, image_size=16, epochs=2, batch_size=8,
                                 lr=3e-3, aug_strength=0.5, dropout=0.2, seed=3), **changes})


def plain_config(**changes):
    return real_config(aug_strength=0.0, dropout=0.0, **changes)


def _worker(rank, port, out_dir, train, val):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        shards, calls = [], []
        real_shard = train_module.epoch_shard

        def recording_shard(*args, **kwargs):  # what this rank actually trained on
            shard = real_shard(*args, **kwargs)
            shards.append(shard.clone())
            return shard

        train_module.epoch_shard = recording_shard
        result = train_module.fit(real_config(), train, val, rank=rank, world_size=WORLD, log=None,
                                  checkpoint_dir=os.path.join(out_dir, "ckpt"),
                                  on_epoch=lambda metrics, directory: calls.append((metrics, directory)))
        train_module.build_model = lambda config: NoBatchNorm()
        plain = train_module.fit(plain_config(), train, val, rank=rank, world_size=WORLD, log=None)
        torch.save({"history": result.history, "shards": shards, "calls": calls,
                    "state": result.model.state_dict(), "plain_history": plain.history,
                    "plain_state": plain.model.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_throughput(history):
    return [{k: v for k, v in m.items() if k != "images_per_s"} for m in history]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    train, val = random_set(48, 16, seed=0), random_set(21, 16, seed=1, first_patient=10)  # 21: uneven val chunks
    mp.spawn(_worker, args=(_free_port(), str(out), train, val), nprocs=WORLD, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return out, train, val, ranks


def test_ranks_report_identical_metrics_and_weights(ddp_run):
    out, _, _, (rank0, rank1) = ddp_run
    assert [m["epoch"] for m in rank0["history"]] == [1, 2]
    assert _without_throughput(rank0["history"]) == _without_throughput(rank1["history"])
    for (name, p), q in zip(rank0["state"].items(), rank1["state"].values()):
        assert torch.equal(p, q), name  # gradients all-reduced, BatchNorm statistics averaged
    # on_epoch on every rank, after rank 0 wrote the checkpoint; rank 1 gets no directory
    assert [d for _, d in rank0["calls"]] == [str(out / "ckpt" / f"epoch_{e:04d}") for e in (1, 2)]
    assert [d for _, d in rank1["calls"]] == [None, None]
    assert all((out / "ckpt" / f"epoch_{e:04d}" / "checkpoint.pt").is_file() for e in (1, 2))


def test_ranks_trained_on_disjoint_equal_shards(ddp_run):
    _, train, _, (rank0, rank1) = ddp_run
    assert len(rank0["shards"]) == len(rank1["shards"]) == 2 * 2  # 2 fits x 2 epochs
    for a, b in zip(rank0["shards"], rank1["shards"]):
        assert len(a) == len(b) == len(train) // WORLD
        assert not set(a.tolist()) & set(b.tolist())
    assert set(rank0["shards"][0].tolist()) != set(rank0["shards"][1].tolist())  # reshuffled per epoch


def test_two_ranks_equal_one_process_with_twice_the_batch(ddp_run, monkeypatch):
    _, train, val, (rank0, _) = ddp_run
    monkeypatch.setattr(train_module, "build_model", lambda config: NoBatchNorm())
    single = train_module.fit(plain_config(batch_size=16), train, val, log=None)
    for (name, p), q in zip(single.model.state_dict().items(), rank0["plain_state"].values()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=name)
    for a, b in zip(_without_throughput(single.history), _without_throughput(rank0["plain_history"])):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5, nan_ok=True), key
