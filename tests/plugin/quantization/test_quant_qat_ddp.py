"""``train_qat`` under a two-process gloo group (torch.multiprocessing): DDP, sharded data, checked ranks."""

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
from edgeslim.errors import EdgeslimError
from edgeslim.plugin.quantization import prepare_qat
from edgeslim.plugin.quantization.qat import train_qat


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_from_env(timeout_s=120)
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 3, 8, 8, generator=gen), torch.randint(0, 2, (32,), generator=gen))
    loader = DataLoader(data, batch_size=4, shuffle=True)
    x = torch.zeros(2, 3, 8, 8)
    prepared = prepare_qat(_net(), x, "int8")
    start = distributed.state_digest(prepared)
    loss = train_qat(prepared, loader, steps=6, lr=0.05)
    got: dict[str, Any] = {"start": start, "end": distributed.state_digest(prepared), "loss": loss}
    if rank == 1:  # this rank's graph drifts: the next run must refuse to start
        with torch.no_grad():
            next(p for p in prepared.parameters() if p.ndim == 4).mul_(1.5)
    try:
        train_qat(prepared, loader, steps=1)
        got["mismatch"] = None
    except EdgeslimError as exc:
        got["mismatch"] = f"{type(exc).__name__}: {exc}"
    distributed.destroy()
    Path(out, f"rank{rank}.json").write_text(json.dumps(got))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("qat_ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(_worker, args=(port, str(out)), nprocs=2, join=True, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_qat_under_ddp_trains_and_ranks_agree(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks
    assert r0["start"] == r1["start"]
    assert r0["end"] == r1["end"] != r0["start"]  # trained, and the same weights, ranges and BN statistics
    assert r0["loss"] != r1["loss"]  # each rank saw its own shard


def test_qat_refuses_ranks_that_hold_different_graphs(ranks: list[dict[str, Any]]) -> None:
    for got in ranks:
        assert got["mismatch"].startswith("DistributedMismatchError: the QAT-prepared model differs across ranks: "
                                          "rank(s) 1 hold sha256")
