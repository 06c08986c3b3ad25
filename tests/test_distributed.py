"""``edgeslim.distributed``: two real gloo processes (torch.multiprocessing), no torchrun needed here."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeslim import distributed
from edgeslim.errors import ConfigError, EdgeslimError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    got: dict[str, Any] = {"joined": distributed.init_from_env(timeout_s=60), "rank": distributed.rank(),
                           "world": distributed.world_size(), "rank0": distributed.is_rank0()}
    model = _net()
    got["same_sha"] = distributed.check_same(model, "the pruned model")
    if rank == 1:  # this rank "prunes differently"
        with torch.no_grad():
            model[0].weight[0, 0] += 1.0
    try:
        distributed.check_same(model, "the pruned model")
        got["mismatch"] = None
    except EdgeslimError as exc:
        got["mismatch"] = f"{type(exc).__name__}: {exc}"
    # the sampler: disjoint shards that change with the epoch
    ds = TensorDataset(torch.arange(20).float().unsqueeze(1), torch.zeros(20, dtype=torch.long))
    sharded = distributed.distributed_sampler(DataLoader(ds, batch_size=4, shuffle=True), seed=3)
    got["batches"] = len(sharded)
    got["epoch0"] = [int(v) for x, _ in sharded for v in x.flatten()]
    got["epoch1"] = [int(v) for x, _ in sharded for v in x.flatten()]
    try:
        distributed.distributed_sampler([(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))])
    except ConfigError as exc:
        got["unshardable"] = str(exc)
    # DDP: different data per rank, weights stay equal; buffers equal after sync_buffers
    model = _net()
    ddp = distributed.wrap_ddp(model)
    got["wrapped"] = type(ddp).__name__
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        loss = ddp(torch.randn(6, 4, generator=gen)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    got["params"] = params.tolist()
    got["bn_mean_before_sync"] = model[1].running_mean.tolist()
    distributed.sync_buffers(ddp)
    got["final_sha"] = distributed.check_same(ddp, "the final weights")
    got["sums"] = distributed.all_sum([1.0, float(rank)])
    distributed.barrier()
    distributed.destroy()
    Path(out, f"rank{rank}.json").write_text(json.dumps(got))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_join_a_gloo_group(two_ranks: list[dict[str, Any]]) -> None:
    assert [(g["joined"], g["rank"], g["world"], g["rank0"]) for g in two_ranks] == [(True, 0, 2, True),
                                                                                      (True, 1, 2, False)]
    assert two_ranks[0]["same_sha"] == two_ranks[1]["same_sha"]


def test_check_same_names_the_rank_that_differs(two_ranks: list[dict[str, Any]]) -> None:
    for got in two_ranks:  # every rank raises, with the same message
        msg = got["mismatch"]
        assert msg is not None and msg.startswith("DistributedMismatchError: the pruned model differs across ranks")
        assert "rank(s) 1 hold sha256" in msg and "of 2 ranks" in msg
    assert two_ranks[0]["mismatch"] == two_ranks[1]["mismatch"]


def test_sampler_shards_are_disjoint_and_reshuffled(two_ranks: list[dict[str, Any]]) -> None:
    r0, r1 = two_ranks
    assert r0["batches"] == r1["batches"] == 3  # 10 images per rank, batches of 4
    for epoch in ("epoch0", "epoch1"):
        assert len(r0[epoch]) == len(r1[epoch]) == 10
        assert sorted(r0[epoch] + r1[epoch]) == list(range(20))
    assert r0["epoch0"] != r0["epoch1"]  # set_epoch was called on the second pass
    assert "is not a torch DataLoader over a dataset with a length" in r0["unshardable"]


def test_ddp_keeps_weights_equal_and_sync_buffers_makes_the_check_pass(two_ranks: list[dict[str, Any]]) -> None:
    r0, r1 = two_ranks
    assert r0["wrapped"] == "DistributedDataParallel"
    assert r0["params"] == r1["params"]
    assert r0["params"] != torch.cat([p.detach().flatten() for p in _net().parameters()]).tolist()  # it trained
    assert r0["bn_mean_before_sync"] != r1["bn_mean_before_sync"]  # each rank's last forward, own data
    assert r0["final_sha"] == r1["final_sha"]
    assert r0["sums"] == r1["sums"] == [2.0, 1.0]


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in distributed.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.init_from_env() is False
    model = _net()
    assert distributed.wrap_ddp(model) is model
    loader = DataLoader(TensorDataset(torch.zeros(4, 4)), batch_size=2)
    assert distributed.distributed_sampler(loader) is loader
    assert distributed.check_same(model, "x") == distributed.state_digest(model)
    assert (distributed.world_size(), distributed.rank(), distributed.is_rank0()) == (1, 0, True)
