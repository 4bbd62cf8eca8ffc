"""StreamingDataset: a torch IterableDataset that runs a node graph inside each DataLoader worker."""

from __future__ import annotations

import copy
import gc
import importlib
import io
import multiprocessing
import os
import pickle
import types
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info
from torchdata.nodes import BaseNode

from sdsnodes.metrics import GraphMetrics
from sdsnodes.nodes.graph import iter_nodes, set_epoch, shutdown

MAX_WORKERS = 1024
_frozen_in: int | None = None  # the pid whose inherited heap freeze_inherited_heap froze


class _GraphPickler(pickle.Pickler):
    """Pickles a graph whose nodes hold modules (torchdata's ParallelMapper keeps its
    multiprocessing module), each by its name, so the graph reaches spawned workers."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


class StreamingDataset(IterableDataset):
    """Wrap a graph for ``torch.utils.data.DataLoader`` / ``StatefulDataLoader``.

    The graph is built once, here, in the main process — so a bad index or argument fails at
    construction; under ``torch.distributed`` each machine converts the index itself and the ranks
    check that they all see the same index fingerprint (only the fingerprint crosses) — and each process that iterates (every worker, or the main process with ``num_workers=0``)
    runs its own copy of it, started there (threads, open files and fsspec clients never cross a
    fork). Each worker reads its own shard of the index. Each
    new iteration (``iter(dataloader)``) starts the next epoch, also with non-persistent workers:
    the epoch counters live in shared memory created here. ``state_dict()`` /
    ``load_state_dict()`` make ``StatefulDataLoader`` resume exactly where it stopped.

    Use ``batch_size=None`` in the DataLoader: the graph batches already.

    Args:
        graph (BaseNode | Callable[[], BaseNode]): the graph, not yet iterated, or a function
            building it, e.g. ``lambda: build_video_graph("index.parquet")`` (called once, here).
            Its nodes must be picklable for spawned workers (the default fork start method
            copies them without pickling).
        group (ProcessGroup | None): this rank's tensor/context-parallel group: its ranks see
            the same batches (see :mod:`sdsnodes.groups`). The graph is sharded by the
            data-parallel rank (one per group; readers built with ``rank``/``world_size`` None
            get it), and the ranks of the group must build the same graph (checked here).
            Iterate ``GroupLoader(dataloader)`` in the training loop.
        dp_rank (int | None), dp_world_size (int | None): the data-parallel position, when not
            derived from ``group`` (without ``group``: each rank loads the shard itself).
        group_mode (GroupMode | str | None): ``"broadcast"`` (default with ``group``: the
            group's first rank loads, :class:`~sdsnodes.GroupLoader` broadcasts) or
            ``"replicate"`` (every rank of the group loads the same shard).
        freeze_worker_heap (bool): in each DataLoader worker, before its graph is built, move
            what the worker inherited from the training process into the garbage collector's
            permanent generation (:func:`freeze_inherited_heap`; default True). False leaves
            the collector as it is.

    State:
        ``{"epoch": int, "graph": <root node state>}`` per worker.

    Raises:
        TypeError: ``graph`` is neither a BaseNode nor a function returning one.
        ValueError: whatever building the graph raises for a bad index or argument; with
            groups, ranks of a group that built different graphs, or a graph built with the
            global rank.
    """

    EPOCH_KEY = "epoch"
    GRAPH_KEY = "graph"  # the keys of state_dict()

    def __init__(
        self,
        graph: BaseNode | Callable[[], BaseNode],
        *,
        group: Any = None,
        dp_rank: int | None = None,
        dp_world_size: int | None = None,
        group_mode: str | None = None,
        freeze_worker_heap: bool = True,
    ) -> None:
        super().__init__()
        self._freeze_worker_heap = bool(freeze_worker_heap)
        template = graph if isinstance(graph, BaseNode) else graph() if callable(graph) else None
        if not isinstance(template, BaseNode):
            raise TypeError(
                f"graph must be a torchdata BaseNode or a function returning one, got {graph!r}"
            )
        self._template = template
        self._group = group
        self._group_info = None  # GroupInfo: the data-parallel position and the group's mode
        if group is not None or dp_rank is not None or dp_world_size is not None:
            from sdsnodes.groups import resolve_group

            self._group_info = resolve_group(template, group, dp_rank, dp_world_size, group_mode)
        elif group_mode is not None:
            raise ValueError(f"{group_mode=} needs group= or dp_rank/dp_world_size")
        # per worker id; no lock (one writer per slot), so it also pickles into spawned workers
        self._epochs_started = multiprocessing.RawArray("q", MAX_WORKERS)
        self._root: BaseNode | None = None
        self._epoch = 0
        self._pending_state: dict[str, Any] | None = None
        self._cursor: dict[str, Any] | None = None  # an elastic cursor, see sdsnodes.elastic
        self._prepared = False  # the graph is reset for the upcoming iteration
        self._metrics = GraphMetrics(template)  # what sdsnodes.stats() reads, from any worker

    @staticmethod
    def _worker_id() -> int:
        info = get_worker_info()
        return info.id if info is not None else 0

    def _build(self) -> BaseNode:
        if self._root is None:  # a private copy: the template stays un-started, safe to fork
            if self._freeze_worker_heap and get_worker_info() is not None:
                freeze_inherited_heap()
            # modules held by nodes (torchdata's ParallelMapper keeps `multiprocessing`) are shared
            memo = {
                id(v): v
                for node in iter_nodes(self._template)
                for v in vars(node).values()
                if isinstance(v, types.ModuleType)
            }
            self._root = copy.deepcopy(self._template, memo)
            self._metrics.attach(self._root)
        return self._root

    def _prepare(self) -> None:
        """Reset the graph for the next iteration: the loaded state, else the next epoch."""
        root = self._build()
        wid = self._worker_id()
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._epoch = int(state[self.EPOCH_KEY])
            root.reset(state[self.GRAPH_KEY])
        elif self._cursor is not None and self._epochs_started[wid] <= self._cursor["epoch"]:
            from sdsnodes.elastic import apply_cursor

            self._epoch = int(self._cursor["epoch"])
            apply_cursor(root, self._cursor)
            root.reset(None)
        else:
            self._epoch = int(self._epochs_started[wid])
            set_epoch(root, self._epoch)
            root.reset(None)
        self._epochs_started[wid] = self._epoch + 1
        self._prepared = True

    @property
    def graph(self) -> BaseNode:
        """The graph as built (never iterated here: each worker iterates a private copy)."""
        return self._template

    @property
    def group(self) -> Any:
        """The tensor/context-parallel process group given (None in DataLoader workers)."""
        return self._group

    @property
    def group_info(self) -> Any:
        """This rank's :class:`~sdsnodes.groups.GroupInfo`, or None without groups."""
        return self._group_info

    def __iter__(self) -> Iterator[Any]:
        if self._group_info is not None and not self._group_info.loads:
            raise RuntimeError(
                f"rank {self._group_info.group_rank} of its group receives its batches from the "
                f"group's first rank ({self._group_info.source}): iterate "
                "sdsnodes.GroupLoader(dataloader), not the DataLoader"
            )
        if not self._prepared:
            self._prepare()
        self._prepared = False
        return _GraphIterator(self._build(), self._metrics.publisher(self._worker_id()))

    def state_dict(self) -> dict[str, Any]:
        """The worker's position: ``{"epoch": int, "graph": dict}`` (JSON-compatible)."""
        if self._root is None or (self._pending_state is not None):
            self._prepare()
        return {self.EPOCH_KEY: self._epoch, self.GRAPH_KEY: self._root.state_dict()}  # type: ignore[union-attr]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from ``state_dict`` at the next ``iter()``.

        Raises:
            ValueError: the state does not come from a StreamingDataset.
        """
        if (
            not isinstance(state_dict, dict)
            or self.GRAPH_KEY not in state_dict
            or self.EPOCH_KEY not in state_dict
        ):
            raise ValueError(
                f"not a StreamingDataset state: expected keys {self.EPOCH_KEY!r} and {self.GRAPH_KEY!r}"
            )
        self._pending_state = state_dict
        self._prepared = False

    def load_cursor(self, cursor: dict[str, Any]) -> None:
        """Continue from an elastic cursor at the next ``iter()`` (see
        :func:`sdsnodes.load_elastic_state`, which calls this)."""
        self._cursor = cursor
        self._pending_state = None
        self._prepared = False

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` (a row of the index), downloaded through the cache and decoded,
        blocking; thread- and process-safe beside running iterators. Not batched.

        Raises:
            IndexError: ``index`` out of range. KeyError: the graph mixes streams (use ``get``).
            DecodeError, DownloadError, FileNotFoundError: the sample is bad (never skipped here).
        """
        from sdsnodes.nodes.random_access import get_sample

        return get_sample(self._template, index)

    def get(self, key: str) -> dict[str, Any]:
        """The sample whose ``__key__`` is ``key`` (``"row"``, or ``"stream/row"`` when mixing).

        Raises:
            KeyError: no sample has that key.
        """
        from sdsnodes.nodes.random_access import find_row, get_sample

        row, stream = find_row(self._template, key)
        return get_sample(self._template, row, stream)

    def num_batches(self, num_workers: int = 0) -> int:
        """Batches this rank yields in one epoch with a DataLoader of ``num_workers`` workers
        (each worker batches its own share of the index): what ``len()`` of the loader handed
        to a trainer must say; :class:`~sdsnodes.StreamingDataLoader` returns it as its
        ``len()``. See :func:`sdsnodes.batch_count.num_batches` (the rule, and the graphs it
        refuses).

        Raises:
            ValueError: ``num_workers`` < 0, or a graph whose batch count is not known up front
                (mixing, filters, bucketing).
        """
        from sdsnodes.batch_count import num_batches

        return num_batches(self._template, num_workers)

    def __len__(self) -> int:
        """Rows of the index (of all streams, when mixing; of the shards, for a packed
        dataset); batches per rank are :meth:`num_batches`."""
        from sdsnodes.index.packed import NUM_ROWS
        from sdsnodes.nodes.epoch_reader import EpochReader
        from sdsnodes.nodes.shard_reader import ShardReader

        shard_tables = {  # a packed dataset: the reader's rows are shards, counted by num_rows
            id(r) for s in iter_nodes(self._template) if isinstance(s, ShardReader)
            for r in iter_nodes(s) if isinstance(r, EpochReader)
        }  # fmt: skip
        return sum(
            sum(n.index.table.column(NUM_ROWS).to_pylist()) if id(n) in shard_tables
            else len(n.index)
            for n in iter_nodes(self._template) if isinstance(n, EpochReader)
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` at the next ``iter()`` (in this process; in workers, call before they start)."""
        for wid in range(MAX_WORKERS):
            self._epochs_started[wid] = epoch
        self._prepared = False

    def shutdown(self) -> None:
        """Stop the graph's threads in this process."""
        if self._root is not None:
            shutdown(self._root)

    def __getstate__(self) -> dict[str, Any]:
        """For spawned workers (``multiprocessing_context="spawn"``; forked ones inherit the
        dataset unpickled): the graph as pickled bytes (its modules by name), never a running
        copy. A converted index travels by value."""
        state = dict(self.__dict__)
        buffer = io.BytesIO()
        _GraphPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(state["_template"])
        state["_template"] = buffer.getvalue()
        state["_root"] = None  # graphs hold threads; each process builds its own
        state["_prepared"] = False
        state["_group"] = None  # process groups stay in the training process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_template"] = pickle.loads(state["_template"])
        self.__dict__.update(state)


def freeze_inherited_heap() -> bool:
    """Move every object this process holds now into the garbage collector's permanent
    generation (:func:`gc.freeze`), once per process; True when this call froze them.

    For a DataLoader worker, before it builds its graph (what :class:`StreamingDataset` does
    unless ``freeze_worker_heap=False``). A forked worker inherits the training process's heap
    (torch, the model's modules, the index…) together with the collector's counters, so its
    first full collection comes early and walks every inherited object, writing to each one's
    header: CPU, and copies of the pages it touches (memory the processes shared). Frozen
    objects are never walked. ``benchmarks/bench_worker_gc.py`` measures it. Objects made
    later (the worker's graph and samples) are collected as usual; garbage cycles among the
    inherited objects are not freed in the worker. This is CPython's own advice for a process
    that forks without exec (the :func:`gc.freeze` documentation), applied in the child, where
    it costs O(1): the collector's lists are spliced, no object is touched.
    """
    global _frozen_in
    if _frozen_in == os.getpid():
        return False
    _frozen_in = os.getpid()
    gc.freeze()
    return True


class _GraphIterator:
    """Iterates a reset graph once; what ``StreamingDataset.__iter__`` returns."""

    def __init__(self, root: BaseNode, metrics: Any = None) -> None:
        self.root = root
        self.metrics = metrics  # a Publisher of the counters, see sdsnodes.metrics

    def __iter__(self) -> _GraphIterator:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self.root)
        except StopIteration:
            if self.metrics is not None:
                self.metrics.flush()
            raise
        if self.metrics is not None:
            self.metrics.tick()
        return item
