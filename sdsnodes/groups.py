"""Tensor/context-parallel groups: every rank of a group sees the same batches.

With tensor (TP) or context (CP) parallelism the ranks of a group hold parts of one model replica
and must train on the same batch; only the groups differ in data (data parallelism, DP). So a
grouped job shards by the *data-parallel* position — ``dp_rank`` in ``[0, dp_world_size)``, one
per group — never by the global rank, and gets each group its batches in one of two ways
(:class:`GroupMode`):

- ``"broadcast"`` (the default): the group's first rank loads its DP shard and sends every
  batch to the other ranks of the group; they load nothing.
- ``"replicate"``: every rank of the group loads the same DP shard itself (same graph, same
  seed, same ``num_workers``: the same batches), no communication.

Design. ``StreamingDataset(graph, group=tp_group)`` finds the DP position (one
``all_gather_object`` over the job at construction, where building a dataset is already a
collective: the groups are numbered by their first global rank), checks that the ranks of every
group built the same graph (:func:`sdsnodes.checkpoint.describe_graph`, the mode and the DP
position; any difference fails on every rank, naming the node), and writes ``rank=dp_rank,
world_size=dp_world_size`` into the graph's readers and Mixers, so that they shard by DP rank in
every worker. A reader built with another explicit rank (the global one) is refused.

The batches cross the group in the training process, not in the dataset: DataLoader workers are
separate processes that cannot join the process group, and a DataLoader has no hook between its
workers and the training loop. Hence :class:`GroupLoader`, a thin iterable over the loader that
the training loop iterates (``for batch in GroupLoader(dl)``): on the group's first rank it
iterates the loader and broadcasts each batch, on the others it only receives — their
DataLoader is never started (no workers, no downloads). Its ``state_dict()`` is the loader's on
the loading rank and empty on the receivers: with broadcast only the group's first rank's state
matters; with replicate every rank resumes its own. A wrapper rather than a DataLoader
subclass keeps every loader (``StatefulDataLoader``, ``torchdata.nodes.Loader``) usable as it is.

A batch crosses in two broadcasts: a header (kind, sizes) and one uint8 buffer holding the
pickled structure of the batch, whose tensors are replaced by (offset, shape, dtype) references
(``pickle`` persistent ids), followed by the tensors' bytes, each 64-byte aligned. The receivers'
tensors are views of that buffer: no pickling of tensor data and one copy on each side, where
``broadcast_object_list`` pickles every tensor (``torch.save``) and broadcasts twice too. With
NCCL the buffer travels on the current CUDA device, and the receivers' tensors arrive there.
"""

from __future__ import annotations

import dataclasses
import enum
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

from sdsnodes._group_wire import END, ERROR, pack, receive, send, send_packed
from sdsnodes.nodes.graph import iter_nodes


class GroupMode(enum.StrEnum):
    """How the ranks of a tensor/context-parallel group get their (identical) batches."""

    BROADCAST = "broadcast"
    """The group's first rank loads the group's data-parallel shard and broadcasts each batch to
    the other ranks (through :class:`GroupLoader`); they load nothing."""
    REPLICATE = "replicate"
    """Every rank of the group loads the same data-parallel shard itself (same graph, same
    ``num_workers``); no communication, group-size times the loading work."""


@dataclasses.dataclass(frozen=True)
class GroupInfo:
    """Where this rank sits among the tensor/context-parallel groups.

    Attributes:
        dp_rank (int): the group's data-parallel rank in ``[0, dp_world_size)``: its shard.
        dp_world_size (int): number of groups (data-parallel replicas).
        group_rank (int): this rank's place in its group; 0 loads under ``"broadcast"``.
        group_size (int): ranks in the group.
        source (int): global rank of the group's first rank (the broadcast source).
        mode (GroupMode): broadcast or replicate.
    """

    dp_rank: int
    dp_world_size: int
    group_rank: int
    group_size: int
    source: int
    mode: GroupMode

    @property
    def loads(self) -> bool:
        """Whether this rank iterates its loader (replicate, or the broadcast source)."""
        return self.mode is GroupMode.REPLICATE or self.group_rank == 0


def set_data_parallel(graph: Any, dp_rank: int, dp_world_size: int) -> None:
    """Make every reader and Mixer of ``graph`` shard by the data-parallel position.

    Nodes built without ``rank``/``world_size`` get ``(dp_rank, dp_world_size)``; nodes built
    with exactly those keep them.

    Raises:
        ValueError: a node was built with another explicit rank or world size (the global rank).
    """
    for node in iter_nodes(graph):
        attrs = vars(node)
        if "rank" not in attrs or "world_size" not in attrs:
            continue
        if node.rank is None and node.world_size is None:
            node.rank, node.world_size = dp_rank, dp_world_size
        elif (node.rank, node.world_size) != (dp_rank, dp_world_size):
            raise ValueError(
                f"{type(node).__name__} was built with rank={node.rank}, "
                f"world_size={node.world_size}, but in tensor/context-parallel groups this rank "
                f"reads the shard of its group: {dp_rank=}, {dp_world_size=}. Pass a function "
                "building the graph with rank and world_size left None (StreamingDataset sets "
                "them), or build it with rank=dp_rank, world_size=dp_world_size"
            )


def resolve_group(
    graph: Any,
    group: Any = None,
    dp_rank: int | None = None,
    dp_world_size: int | None = None,
    mode: GroupMode | str | None = None,
) -> GroupInfo:
    """The :class:`GroupInfo` of this rank; sets the DP position in ``graph``'s readers.

    A collective over the whole job when a process group of more than one rank is up: every
    rank must call it (``StreamingDataset`` does, at construction) with its own group.

    Args:
        graph: the built, not yet iterated graph.
        group (ProcessGroup | None): this rank's tensor/context-parallel group.
        dp_rank (int | None), dp_world_size (int | None): explicit data-parallel position; by
            default, from the groups (numbered by their first global rank).
        mode (GroupMode | str | None): None is ``"broadcast"`` with a group, else ``"replicate"``.

    Raises:
        ValueError: a bad argument, groups that overlap, or ranks of one group that disagree on
            the graph, the mode or the DP position (the message names the ranks and the node).
    """
    import torch.distributed as dist

    from sdsnodes.distributed import can_broadcast, rank_and_world_size

    if (dp_rank is None) != (dp_world_size is None):
        raise ValueError(
            f"give both dp_rank and dp_world_size or neither ({dp_rank=}, {dp_world_size=})"
        )
    if dp_rank is not None:
        rank_and_world_size(dp_rank, dp_world_size)  # validates the pair
    mode = GroupMode(mode) if mode is not None else None
    if group is None and mode is GroupMode.BROADCAST:
        raise ValueError("mode='broadcast' needs group= (the process group to broadcast in)")
    mode = mode or (GroupMode.BROADCAST if group is not None else GroupMode.REPLICATE)
    if group is not None and not (dist.is_available() and dist.is_initialized()):
        raise ValueError("group= needs torch.distributed initialized (init_process_group)")
    me = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    members = tuple(dist.get_process_group_ranks(group)) if group is not None else None
    if members is not None and me not in members:
        raise ValueError(f"rank {me} is not in the group it passed (ranks {list(members)})")
    from sdsnodes.checkpoint import describe_graph

    description = [f"mode={mode.value}", *describe_graph(graph)]
    mine = {
        "rank": me,
        "members": members,
        "dp": None if dp_rank is None else (dp_rank, dp_world_size),
    }
    if can_broadcast():
        records: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(records, (mine, description))
    else:
        records = [(mine, description)]
    by_rank = {rec["rank"]: (rec, desc) for rec, desc in records}
    groups = _groups(by_rank)
    leaders = sorted(groups)
    for leader in leaders:
        _check_group(groups[leader], by_rank)
    given = [by_rank[leader][0]["dp"] for leader in leaders if by_rank[leader][0]["dp"]]
    if len(set(given)) != len(given) or len({w for _, w in given}) > 1:
        raise ValueError(
            f"the groups {[groups[leader] for leader in leaders]} give the data-parallel positions "
            f"{given}: each group needs its own dp_rank, all the same dp_world_size"
        )
    my_group = next(g for g in groups.values() if me in g)
    if dp_rank is None:
        if members is None:  # neither a group nor a DP position: one group per rank
            raise ValueError("give group= or dp_rank/dp_world_size")
        dp_rank, dp_world_size = leaders.index(my_group[0]), len(leaders)
    set_data_parallel(graph, dp_rank, dp_world_size)
    return GroupInfo(dp_rank, dp_world_size, my_group.index(me), len(my_group), my_group[0], mode)


def _groups(by_rank: dict[int, tuple[dict, list[str]]]) -> dict[int, list[int]]:
    """The groups of the job by their first rank: the ranks' own groups, else the ranks that
    share a DP position."""
    groups: dict[int, list[int]] = {}
    for rank, (rec, _) in sorted(by_rank.items()):
        if rec["members"] is not None:
            members = list(rec["members"])
        else:
            members = sorted(r for r, (o, _) in by_rank.items() if o["dp"] == rec["dp"])
        for other in members:
            theirs = by_rank.get(other, ({"members": None}, None))[0]["members"]
            if other in by_rank and theirs is not None and list(theirs) != members:
                raise ValueError(
                    f"rank {rank} is in group {members}, rank {other} in {list(theirs)}: the "
                    "tensor/context-parallel groups must not overlap"
                )
        groups[members[0]] = members
    return groups


def _check_group(members: list[int], by_rank: dict[int, tuple[dict, list[str]]]) -> None:
    """Raise unless the ranks of the group (those that answered) agree on DP position and graph."""
    first, first_desc = by_rank[members[0]]
    for other in (r for r in members[1:] if r in by_rank):
        rec, desc = by_rank[other]
        if rec["dp"] != first["dp"]:
            raise ValueError(
                f"ranks {members[0]} and {other} of one tensor/context-parallel group give "
                f"dp_rank, dp_world_size = {first['dp']} and {rec['dp']}"
            )
        if desc != first_desc:
            i = next((i for i, (a, b) in enumerate(zip(first_desc, desc)) if a != b), None)
            what = (
                f"node {i - 1}: {first_desc[i]} on rank {members[0]}, {desc[i]} on rank {other}"
                if i is not None and i > 0
                else f"{first_desc[i]} vs {desc[i]}"
                if i == 0
                else f"{len(first_desc) - 1} nodes vs {len(desc) - 1}"
            )
            raise ValueError(
                f"ranks {members[0]} and {other} of one tensor/context-parallel group built "
                f"different graphs, but they must see the same batches: {what}"
            )


class GroupLoader:
    """Iterate a loader so that every rank of a tensor/context-parallel group gets its batches.

    Under ``"broadcast"`` the group's first rank iterates ``loader`` and broadcasts each batch;
    the other ranks receive them (their ``loader`` is never started). Under ``"replicate"`` every
    rank iterates its own ``loader``. Iterate it on every rank of the group in step (a training
    loop in lockstep, as TP/CP needs anyway); stopping early is fine when all ranks stop at the
    same step. Each ``iter()`` is one epoch of the loader.

    Args:
        loader (Iterable): a DataLoader (``StatefulDataLoader``…) over a grouped
            :class:`~sdsnodes.StreamingDataset` (its group and mode are used), or any iterable
            of batches when ``group`` is given (then broadcast from the group's first rank).
        group (ProcessGroup | None): the group, when ``loader`` is not over a grouped dataset.

    Yields:
        The loader's batches. On broadcast receivers their tensors are views of one received
        uint8 buffer (on the current CUDA device with NCCL), other values unpickled copies.

    State:
        ``{"mode": str, "loader": <loader state> | None}``: None on broadcast receivers.

    Raises:
        ValueError: no group (neither ``group`` nor a grouped dataset); or, under replicate, the
            ranks of the group iterate loaders with different ``num_workers`` (they would see
            different batches).
        Exception: what the source's loader raised, re-raised on every rank of the group.
    """

    MODE_KEY = "mode"
    LOADER_KEY = "loader"

    def __init__(self, loader: Iterable[Any], group: Any = None) -> None:
        import torch.distributed as dist

        self.loader = loader
        dataset = getattr(loader, "dataset", None)
        info: GroupInfo | None = getattr(dataset, "group_info", None)
        if info is not None:
            if group is not None and group is not dataset.group:  # type: ignore[union-attr]
                raise ValueError("group= differs from the group the dataset was built with")
            group = dataset.group  # type: ignore[union-attr]
        elif group is not None:
            ranks = dist.get_process_group_ranks(group)
            me = ranks.index(dist.get_rank())
            info = GroupInfo(0, 1, me, len(ranks), ranks[0], GroupMode.BROADCAST)
        else:
            raise ValueError(
                "GroupLoader needs a loader over StreamingDataset(..., group=...) or group="
            )
        self.info, self.group = info, group
        self.bytes_sent = 0  # payload bytes this rank broadcast (each receiver gets them)
        if info.mode is GroupMode.REPLICATE and group is not None and info.group_size > 1:
            self._check_replicas()

    def _check_replicas(self) -> None:
        import torch.distributed as dist

        mine = {"num_workers": getattr(self.loader, "num_workers", None)}
        everyone: list[Any] = [None] * self.info.group_size
        dist.all_gather_object(everyone, mine, group=self.group)
        if any(other != everyone[0] for other in everyone):
            raise ValueError(
                f"the ranks of a replicating group iterate different loaders {everyone}: "
                "they would see different batches; use the same num_workers on every rank"
            )

    def __iter__(self) -> Iterator[Any]:
        info = self.info
        if info.mode is GroupMode.REPLICATE or info.group_size == 1:
            yield from self.loader
            return
        if info.group_rank != 0:
            while True:
                kind, obj = receive(info.source, self.group)
                if kind == END:
                    return
                if kind == ERROR:
                    raise obj
                yield obj
        it = None
        while True:
            try:  # nothing was sent yet: an error here reaches the receivers
                it = iter(self.loader) if it is None else it
                batch = next(it)
                packed = pack(batch)
            except StopIteration:
                send(None, info.source, self.group, END)
                return
            except Exception as error:
                send(_portable(error, info.source), info.source, self.group, ERROR)
                raise
            self.bytes_sent += send_packed(packed, info.source, self.group)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    @property
    def dataset(self) -> Any:
        """The loader's dataset (None if it has none): ``save_state(..., graph=group_loader)``
        describes its graph."""
        return getattr(self.loader, "dataset", None)

    def state_dict(self) -> dict[str, Any]:
        """The loader's state where this rank loads, else None (a broadcast receiver)."""
        state = self.loader.state_dict() if self.info.loads else None  # type: ignore[attr-defined]
        return {self.MODE_KEY: self.info.mode.value, self.LOADER_KEY: state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the loader (where this rank loads; a receiver has nothing to resume).

        Raises:
            ValueError: not a GroupLoader state, another mode, or a receiver's (empty) state
                given to a rank that loads.
        """
        if not isinstance(state_dict, dict) or self.LOADER_KEY not in state_dict:
            raise ValueError(
                f"not a GroupLoader state: expected keys {self.MODE_KEY!r}, {self.LOADER_KEY!r}"
            )
        if state_dict.get(self.MODE_KEY) != self.info.mode.value:
            raise ValueError(
                f"the state was saved with mode {state_dict.get(self.MODE_KEY)!r}, this loader "
                f"runs {self.info.mode.value!r}"
            )
        if not self.info.loads:
            return
        if state_dict[self.LOADER_KEY] is None:
            raise ValueError(
                "this state comes from a broadcast receiver, which loads nothing: give the group's "
                "first rank the state its own GroupLoader saved"
            )
        self.loader.load_state_dict(state_dict[self.LOADER_KEY])  # type: ignore[attr-defined]


def _portable(error: BaseException, source: int) -> BaseException:
    """``error`` if it pickles, else a RuntimeError naming it; noted as raised on ``source``."""
    try:
        copy = pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - anything unpicklable becomes a RuntimeError
        copy = RuntimeError(f"{type(error).__name__}: {error}")
    copy.add_note(f"raised on rank {source}, the group's loading rank")
    return copy
