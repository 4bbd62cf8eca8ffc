"""What the loader did, cumulative since it was made: ``stats(loader)`` and the data stall time.

Every :class:`~sdsnodes.StreamingDataset` counts, in each process that runs its graph, what each
node did (items, seconds busy, seconds waiting on its source), the seconds each codec decoded,
the samples skipped by reason and the cache's hits, misses and bytes downloaded. DataLoader
workers leave their counts in shared memory made with the dataset (see
:mod:`sdsnodes._metrics_board`), so :func:`stats` in the training process sums all workers
without a message crossing a queue. :func:`timed` wraps a loader to measure the data stall
time: how long the training loop waited for each batch.

Example:
    >>> loader = sdsnodes.timed(StatefulDataLoader(ds, batch_size=None, num_workers=4))
    >>> for batch in loader:
    ...     train_step(batch)
    >>> s = sdsnodes.stats(loader)
    >>> s["wait_s"] / s["elapsed_s"]  # the fraction of the time the loop was starved
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes._metrics_board import MetricsBoard, Publisher, merge
from sdsnodes._metrics_export import flat, to_prometheus
from sdsnodes._metrics_record import Recorder, unwrap
from sdsnodes._metrics_record import instrument as _instrument

__all__ = ["TimedLoader", "flat", "instrument", "postfix", "stats", "timed", "to_prometheus"]

ENV = "SDS_METRICS"
"""Environment variable: ``0`` when a StreamingDataset is made turns its counting off (its
:func:`stats` then read zeros); for measuring the counting's own cost."""

_recorders: weakref.WeakKeyDictionary[BaseNode, Recorder] = weakref.WeakKeyDictionary()


def instrument(graph: BaseNode) -> BaseNode:
    """Count what each node of ``graph`` does, for :func:`stats` (a graph iterated without a
    :class:`~sdsnodes.StreamingDataset`, which instruments the copies it runs by itself, and
    takes the timers off a graph it is given).

    Call it before iterating. Each node's ``next`` is wrapped by a timer (two
    ``time.perf_counter`` calls per item) and each Decoder codec by another.

    Returns:
        BaseNode: ``graph`` itself, instrumented.
    """
    _recorders[graph] = _instrument(graph)
    return graph


class GraphMetrics:
    """The counters of one StreamingDataset: the board its workers write, this process's
    recorder and the cache's machine-wide counters when the dataset was made.

    Args:
        template (BaseNode): the dataset's graph, as built (not iterated).
    """

    def __init__(self, template: BaseNode) -> None:
        unwrap(template)  # instrumented by the user: its timers would travel into the copies
        self.enabled = os.environ.get(ENV, "1") != "0"
        self.board = MetricsBoard()
        self.cache_dirs, self.max_bytes = _caches_of(template)
        self.evictions_before = sum(_ledger(d, files=False)["evictions"] for d in self.cache_dirs)
        self._recorder: Recorder | None = None
        self._publisher: Publisher | None = None
        self._pid = 0

    def attach(self, root: BaseNode) -> None:
        """Instrument ``root``, the graph this process runs (a private copy of the template)."""
        self._recorder = _instrument(root) if self.enabled else None
        self._publisher = None

    def publisher(self, worker_id: int) -> Publisher | None:
        """The publisher of this process's counters into slot ``worker_id`` (made once per
        process: it counts on from what the slot held)."""
        if self._recorder is None:
            return None
        if self._publisher is None or self._pid != os.getpid():
            base = self.board.read_slot(worker_id)
            self._publisher = Publisher(self.board, worker_id, self._recorder, base)
            self._pid = os.getpid()
        return self._publisher

    def snapshots(self) -> list[dict[str, Any]]:
        """The counters of every process that ran the graph (this one written first)."""
        if self._publisher is not None and self._pid == os.getpid():
            self._publisher.flush()
        return self.board.read()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_recorder"] = state["_publisher"] = None  # each process instruments its own
        return state


class TimedLoader:
    """A loader that measures the data stall time: the seconds the training loop spent waiting
    for each batch (in ``next()``, worker start-up included), cumulative.

    Iterate it as the loader; other attributes (``state_dict``, ``load_state_dict``,
    ``dataset``) are the loader's.

    Args:
        loader (Iterable): a DataLoader, ``StatefulDataLoader``, ``torchdata.nodes.Loader``...

    Attributes:
        wait_s (float): seconds waited for batches, all epochs.
        last_wait_s (float): seconds waited for the last batch.
        elapsed_s (float): seconds since the first batch was asked for (waits and training).
        batches (int): batches received. samples (int): samples in them (a batch's first
            dimension, or its length).
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.wait_s = 0.0
        self.last_wait_s = 0.0
        self.batches = 0
        self.samples = 0
        self._started: float | None = None

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self._started is None else time.perf_counter() - self._started

    def __iter__(self) -> Iterator[Any]:
        start = time.perf_counter()
        if self._started is None:
            self._started = start
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                self.wait_s += time.perf_counter() - start
                return
            self.last_wait_s = time.perf_counter() - start
            self.wait_s += self.last_wait_s
            self.batches += 1
            self.samples += _batch_len(batch)
            yield batch
            start = time.perf_counter()

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


def timed(loader: Iterable[Any]) -> TimedLoader:
    """``loader`` measuring its data stall time (see :class:`TimedLoader`)."""
    return TimedLoader(loader)


def stats(loader_or_graph: Any, *, ledger: bool = True) -> dict[str, Any]:
    """What the loader did, cumulative since it was made, summed over its DataLoader workers.

    Args:
        loader_or_graph: a DataLoader or ``StatefulDataLoader`` over a
            :class:`~sdsnodes.StreamingDataset`, the dataset itself, a :class:`TimedLoader`
            of one, or a graph (a ``BaseNode`` or ``torchdata.nodes.Loader``) that went
            through :func:`instrument`.
        ledger (bool): read the cache directory's figures (``evictions``, ``bytes``,
            ``pinned_files``: None when False) from its ledger, a SQLite read of a few ms on
            large caches; the rest is read from memory.

    Returns:
        dict: ``samples`` (int, out of the graphs: what reached their batching node),
        ``wait_s``, ``elapsed_s`` (float seconds), ``batches`` and ``loop_samples`` (int, what the
        training loop received) — None unless the loader is a :class:`TimedLoader`; ``skipped`` {reason: int}; ``cache`` {``hits``, ``misses``,
        ``bytes_downloaded`` (this loader's processes), ``hit_rate`` (float or None),
        ``in_flight`` (downloads running now), ``evictions`` (in the cache directory since the
        loader was made, by any process), ``bytes``, ``pinned_files`` (the directory now),
        ``max_bytes`` (the budget, None: none)}; ``nodes`` {name: {``items``, ``busy_s``,
        ``wait_s``}}; ``decode_s`` / ``decoded`` {codec class: seconds / calls}; ``compose``
        {``composed_groups``, ``composed_objects`` (small ``gs://`` files fetched through one
        composed object), ``fallback_groups``, ``fallback_objects`` (groups whose compose
        failed, fetched one by one)}: zeros unless ``FetchOptions(gcs_compose=...)``;
        ``workers`` (processes counted). Sizes in bytes, times in seconds.

    Raises:
        ValueError: a graph that was not instrumented, or an object that is none of these.
    """
    timer = loader_or_graph if isinstance(loader_or_graph, TimedLoader) else None
    target = timer.loader if timer is not None else loader_or_graph
    for attr in ("dataset", "root"):  # a DataLoader's dataset, a torchdata Loader's graph
        inner = getattr(target, attr, None)
        if inner is not None:
            target = inner
            break
    metrics = getattr(target, "_metrics", None)
    if isinstance(metrics, GraphMetrics):
        snapshots = metrics.snapshots()
        cache_dirs, max_bytes, before = (
            metrics.cache_dirs,
            metrics.max_bytes,
            metrics.evictions_before,
        )
    elif isinstance(target, BaseNode) and target in _recorders:
        recorder = _recorders[target]
        snapshots = [recorder.snapshot()]
        cache_dirs, max_bytes, before = *_caches_of(target), None
    else:
        raise ValueError(
            f"cannot read stats of {type(loader_or_graph).__name__}: pass a DataLoader over a "
            "StreamingDataset, the dataset, sdsnodes.timed(loader), or a graph given to "
            "sdsnodes.instrument(graph) before it was iterated"
        )
    total: dict[str, Any] = {
        "samples": 0,
        "skipped": {},
        "nodes": {},
        "decode_s": {},
        "decoded": {},
    }
    for snapshot in snapshots:
        merge(total, snapshot)
    cache = {"hits": 0, "misses": 0, "bytes_downloaded": 0, "in_flight": 0}
    cache.update(total.pop("cache", {}))
    looked = cache["hits"] + cache["misses"]
    cache["hit_rate"] = cache["hits"] / looked if looked else None
    cache["evictions"] = cache["bytes"] = cache["pinned_files"] = None
    if ledger:
        ledgers = [_ledger(d) for d in cache_dirs]
        evictions = sum(s["evictions"] for s in ledgers)
        cache["evictions"] = evictions - before if before is not None else evictions
        cache["bytes"] = sum(s["bytes"] for s in ledgers)
        cache["pinned_files"] = sum(s["pinned_files"] for s in ledgers)
    cache["max_bytes"] = max_bytes
    from sdsnodes.nodes._gcs_compose import COMPOSE_COUNTS

    compose = dict.fromkeys(COMPOSE_COUNTS, 0)
    compose.update(total.pop("compose", {}))
    out = {
        "samples": int(total["samples"]),
        "batches": timer.batches if timer is not None else None,
        "loop_samples": timer.samples if timer is not None else None,
        "wait_s": timer.wait_s if timer is not None else None,
        "elapsed_s": timer.elapsed_s if timer is not None else None,
        "skipped": total["skipped"],
        "cache": cache,
        "nodes": total["nodes"],
        "decode_s": total["decode_s"],
        "decoded": total["decoded"],
        "compose": compose,
        "workers": len(snapshots),
    }
    return out


def postfix(stats: dict[str, Any]) -> dict[str, str]:
    """A tqdm postfix of :func:`stats` of a :class:`TimedLoader`: samples/s (of the training
    loop), wait % (data stall time / elapsed time) and cache hit % (``-`` before any lookup).

    Example:
        >>> bar.set_postfix(sdsnodes.postfix(sdsnodes.stats(loader, ledger=False)))
    """
    elapsed = stats.get("elapsed_s") or 0.0
    rate = stats["cache"].get("hit_rate")
    return {
        "samples/s": f"{(stats.get('loop_samples') or 0) / elapsed:.1f}" if elapsed else "-",
        "wait": f"{(stats.get('wait_s') or 0.0) / elapsed:.0%}" if elapsed else "-",
        "hit": "-" if rate is None else f"{rate:.0%}",
    }


def _caches_of(graph: BaseNode) -> tuple[list[str], int | None]:
    """The cache directories the graph's downloaders use, and their budget (the smallest)."""
    from sdsnodes.nodes.graph import iter_nodes

    dirs: set[str] = set()
    budgets = []
    for node in iter_nodes(graph):
        cache_dir = getattr(node, "cache_dir", None)
        if isinstance(cache_dir, str) and hasattr(node, "max_bytes"):
            dirs.add(os.path.abspath(cache_dir))
            if node.max_bytes is not None:
                budgets.append(int(node.max_bytes))
    return sorted(dirs), min(budgets) if budgets else None


def _ledger(cache_dir: str, files: bool = True) -> dict[str, int]:
    """The cache directory's machine-wide figures now, read-only (see ``read_ledger``)."""
    from sdsnodes._ledger_view import read_ledger

    return read_ledger(cache_dir, files=files)


def _batch_len(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor, else its length, else 1."""
    values = list(batch.values()) if isinstance(batch, dict) else [batch]
    for value in values:
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    for value in values:
        if isinstance(value, (list, tuple)):
            return len(value)
    return 1
