"""Rank, world size and DataLoader-worker discovery, and the shard of a (rank, worker) pair."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """Where this reader sits in the job.

    Attributes:
        rank (int): this process's rank in ``[0, world_size)``.
        world_size (int): number of ranks.
        worker (int): DataLoader worker id in ``[0, num_workers)`` (0 outside workers).
        num_workers (int): DataLoader workers per rank (1 outside workers).
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def shard(self) -> int:
        """Index of this (rank, worker) pair among all of them: ``rank * num_workers + worker``."""
        return self.rank * self.num_workers + self.worker

    @property
    def num_shards(self) -> int:
        """Number of (rank, worker) pairs: ``world_size * num_workers``."""
        return self.world_size * self.num_workers


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Rank and world size: explicit args, else ``torch.distributed``, else ``RANK``/``WORLD_SIZE``.

    Raises:
        ValueError: only one of ``rank``/``world_size`` given, or ``rank`` not in ``[0, world_size)``.
    """
    if (rank is None) != (world_size is None):
        raise ValueError(f"give both rank and world_size or neither (got {rank=}, {world_size=})")
    if rank is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank = int(os.environ.get("RANK", 0))
            world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size is None or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"{rank=} must be in [0, {world_size=})")
    return rank, world_size


def shard_info(rank: int | None = None, world_size: int | None = None) -> ShardInfo:
    """The :class:`ShardInfo` of the calling process and DataLoader worker."""
    from torch.utils.data import get_worker_info

    rank, world_size = rank_and_world_size(rank, world_size)
    info = get_worker_info()
    if info is None:
        return ShardInfo(rank, world_size, 0, 1)
    return ShardInfo(rank, world_size, info.id, info.num_workers)


def can_broadcast() -> bool:
    """Whether this process may join collectives: a process group of more than one rank is up and
    we are not inside a DataLoader worker."""
    import torch.distributed as dist
    from torch.utils.data import get_worker_info

    return (
        dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
        and not get_worker_info()
    )


def broadcast_from_rank0(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its result (or its error) to every rank.

    Without an initialized process group, or inside a DataLoader worker (which must not join
    collectives), every caller simply runs ``fn``. The result must be picklable.

    Raises:
        Exception: whatever ``fn`` raised on rank 0, re-raised on every rank (as a ValueError
            naming the original type when it cannot be pickled).
    """
    import torch.distributed as dist

    if not can_broadcast():
        return fn()
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            payload = [("ok", fn())]
        except Exception as error:  # noqa: BLE001 - sent to the other ranks, then re-raised
            payload = [("error", ValueError(f"on rank 0: {type(error).__name__}: {error}"))]
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value
