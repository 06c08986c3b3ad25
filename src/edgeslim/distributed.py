"""Running under ``torchrun``: process group, DDP, ``DistributedSampler`` and cross-rank weight checks.

Nothing here does anything unless the process was started by ``torchrun`` (or
``python -m torch.distributed.run``), which sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``. Then :func:`init_from_env` joins the process group
(``nccl`` when CUDA is available, ``gloo`` on the CPU) and edgeslim's one training loop
(:func:`edgeslim.train.train_loop`, run by ``finetune``, ``train_qat`` and the others) wraps
the model in ``DistributedDataParallel`` and shards the data with ``DistributedSampler``.

Every rank builds (or prunes) its own copy of the model; :func:`check_same` proves that the
copies are identical (structure and weights) by gathering a sha256 of each rank's state_dict,
and raises :class:`DistributedMismatchError` naming the ranks that differ.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from edgeslim.errors import ConfigError, EdgeslimError

#: torchrun's environment variables that must all be set for a distributed run.
ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(EdgeslimError):
    """A distributed run cannot start or its ranks disagree."""


class DistributedMismatchError(DistributedError):
    """Ranks hold different models where they must hold the same one."""


def launched_by_torchrun() -> bool:
    """Whether torchrun's environment variables are all set (this process is one of its workers)."""
    return all(os.environ.get(k) for k in ENV_VARS)


def init_from_env(*, timeout_s: float = 600.0) -> bool:
    """Join the process group torchrun set up (no-op outside torchrun or when already joined).

    The backend is ``nccl`` when CUDA is available (each rank uses ``cuda:LOCAL_RANK``),
    ``gloo`` otherwise.

    Args:
        timeout_s: How long collective operations wait for the other ranks.

    Returns:
        Whether this process is part of a distributed run now.

    Raises:
        DistributedError: torchrun's variables are malformed or the group cannot be joined
            (the message names the rendezvous address and what to check).
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; run without torchrun")
    try:
        me, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError as exc:
        raise DistributedError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not integers ({exc})") from None
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    backend = "nccl" if cuda else "gloo"
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend, rank=me, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # re-raised as a one-line error naming the address
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DistributedError(f"rank {me} of {world} could not join the {backend} process group at {where} "
                               f"({first}); check that every node can reach it and uses the same --rdzv_endpoint") from exc
    return True


def active() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside a distributed run)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 outside a distributed run)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank0() -> bool:
    """Whether this process is rank 0 (always true outside a distributed run): it saves and prints."""
    return rank() == 0


def device() -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` under nccl, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap_ddp(model: nn.Module, on: torch.device | None = None) -> nn.Module:
    """``DistributedDataParallel(model)`` in a distributed run (the model moved to ``on``, default this rank's device), else ``model``."""
    if not active():
        return model
    dev = on if on is not None else device()
    model.to(dev)
    ids = [dev.index] if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class ShardedLoader:
    """A DataLoader over this rank's shard (``DistributedSampler``); each pass calls ``set_epoch`` with the next epoch.

    Attributes:
        loader: The rebuilt DataLoader.
        sampler: Its ``DistributedSampler``.
    """

    def __init__(self, loader: DataLoader[Any], sampler: DistributedSampler[Any]) -> None:
        self.loader, self.sampler = loader, sampler
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


def distributed_sampler(loader: Any, *, seed: int = 0, shuffle: bool = True) -> Any:
    """``loader`` rebuilt over the same dataset with a ``DistributedSampler`` (unchanged outside a distributed run).

    Args:
        loader: A ``DataLoader`` over a map-style dataset (one with ``len``).
        seed: The sampler's shuffling seed (the same on every rank).
        shuffle: Shuffle each epoch (``set_epoch`` is called on every pass).

    Returns:
        A :class:`ShardedLoader` (has ``len``: batches per rank and epoch); one given is returned as it is.

    Raises:
        ConfigError: ``loader`` is not a DataLoader over a dataset with a length (e.g. your own
            iterable from ``--data python:...``), so it cannot be sharded.
    """
    if not active() or isinstance(loader, ShardedLoader):
        return loader
    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or dataset is None or not hasattr(dataset, "__len__"):
        raise ConfigError(
            f"the training data ({type(loader).__name__}) is not a torch DataLoader over a dataset with a length, so "
            "DistributedSampler cannot shard it across ranks; return a DataLoader over a map-style Dataset from your "
            "--data python: function, or run without torchrun"
        )
    sampler: DistributedSampler[Any] = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(),
                                                          shuffle=shuffle, seed=seed)
    rebuilt = DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                         collate_fn=loader.collate_fn, drop_last=loader.drop_last, pin_memory=loader.pin_memory)
    return ShardedLoader(rebuilt, sampler)


def state_digest(model: nn.Module) -> str:
    """sha256 over the state_dict's names, shapes, dtypes and bytes (a DDP wrapper is looked through)."""
    from edgeslim.io import state_sha256

    return state_sha256(unwrap(model).state_dict())


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``model`` itself otherwise)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(model, nn.parallel.DistributedDataParallel) and isinstance(inner, nn.Module) else model


def check_same(model: nn.Module, what: str) -> str:
    """Check that every rank holds the same ``model`` (structure and weights); return its sha256.

    Outside a distributed run this only returns the digest.

    Args:
        model: This rank's model (or its DDP wrapper).
        what: What the model is, for the message (``"the pruned model"``, ``"the final weights"``).

    Raises:
        DistributedMismatchError: On every rank, when a rank's digest differs from rank 0's; the
            message names the ranks that differ and both digests.
    """
    digest = state_digest(model)
    if not active():
        return digest
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, digest)
    differ = [r for r, d in enumerate(gathered) if d != gathered[0]]
    if differ:
        ranks = ", ".join(str(r) for r in differ)
        raise DistributedMismatchError(
            f"{what} differs across ranks: rank(s) {ranks} hold sha256 {gathered[differ[0]][:16]}… but rank 0 holds "
            f"{str(gathered[0])[:16]}… (of {world_size()} ranks); every rank must build and prune the model "
            "identically: same input file, seed, data order and edgeslim version"
        )
    return digest


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, quantization ranges) to every rank.

    DDP keeps parameters equal but lets each rank's last forward update its own buffers;
    call this before :func:`check_same` on the final weights (rank 0's are the ones saved).
    """
    if not active():
        return
    for buf in unwrap(model).buffers():
        dist.broadcast(buf, src=0)


def barrier() -> None:
    """Wait for every rank (no-op outside a distributed run)."""
    if active():
        dist.barrier()


def destroy() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (``values`` itself outside a distributed run)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


__all__ = [
    "DistributedError",
    "DistributedMismatchError",
    "ShardedLoader",
    "active",
    "all_sum",
    "barrier",
    "check_same",
    "destroy",
    "device",
    "distributed_sampler",
    "init_from_env",
    "is_rank0",
    "launched_by_torchrun",
    "rank",
    "sync_buffers",
    "unwrap",
    "world_size",
]
