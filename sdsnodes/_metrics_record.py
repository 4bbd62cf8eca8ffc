"""The counters of one process's graph: a thin timing wrapper on each node's ``next`` and on
each codec, and :class:`Recorder`, which reads them (with the skips and the cache's counters)
into a JSON-compatible snapshot. :mod:`sdsnodes.metrics` merges the snapshots of the workers.

Time is measured with ``time.perf_counter`` around each call; a node's ``busy_s`` is the time
its ``next()`` took minus the time spent in its sources' ``next()`` on the same thread (its
``wait_s``). The timers add about 0.3 µs per call (one call per node per item). A node that pulls its source on threads of its own (Decoder, CachingDownloader,
Prefetcher) counts the time its consumer blocked on those threads as busy: from the outside,
that is the time the stage cost.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Iterator
from threading import get_ident
from time import perf_counter
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.errors import ErrorPolicy


class NodeCounters:
    """What one node did: ``items`` yielded, ``total_s`` seconds in its ``next()``, of which
    ``child_s`` in its sources' ``next()`` on the same thread; ``active``: the thread of its
    latest call."""

    __slots__ = ("items", "total_s", "child_s", "active")

    def __init__(self) -> None:
        self.items = 0
        self.total_s = 0.0
        self.child_s = 0.0
        self.active = 0

    def as_dict(self) -> dict[str, float]:
        busy = max(0.0, self.total_s - self.child_s)
        return {"items": self.items, "busy_s": busy, "wait_s": self.child_s}


def _timed_next(
    counters: NodeCounters, parent: NodeCounters | None, next_: Callable[[], Any]
) -> Callable[[], Any]:
    """What stands in for ``node.next`` (an instance attribute, which ``BaseNode.__next__``
    calls): ``next_`` timed, its time added to ``parent``'s ``child_s`` when the parent is
    in a call on this thread. About 0.3 µs per call (a closure: half a class's ``__call__``)."""

    def timed() -> Any:
        start = perf_counter()
        thread = counters.active = get_ident()
        try:
            item = next_()
        except BaseException:  # StopIteration too: the time counts, not an item
            elapsed = perf_counter() - start
            counters.total_s += elapsed
            if parent is not None and parent.active == thread:
                parent.child_s += elapsed
            raise
        elapsed = perf_counter() - start
        counters.total_s += elapsed
        counters.items += 1
        if parent is not None and parent.active == thread:
            parent.child_s += elapsed
        return item

    timed.sds_counters = counters  # type: ignore[attr-defined]
    return timed


class _TimedCodec:
    """A codec that counts its calls and the seconds they took (from any thread)."""

    def __init__(self, codec: Callable[..., Any], name: str) -> None:
        self.codec = codec
        self.name = name
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()
        # the optional attributes the Decoder asks for on every call (sdsnodes.codecs), set
        # here: a miss through __getattr__ costs ~4 µs (two AttributeErrors)
        self.source_column = getattr(codec, "source_column", None)
        self.needs_sample = getattr(codec, "needs_sample", False)
        self.accepts_none = getattr(codec, "accepts_none", False)

    def __getattr__(self, name: str) -> Any:  # any other attribute of the codec
        codec = self.__dict__.get("codec")
        if codec is None:  # being copied or unpickled: not set up yet
            raise AttributeError(name)
        return getattr(codec, name)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:  # a copied or pickled graph: the bare codec
        return _bare, (self.codec,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = perf_counter()
        try:
            return self.codec(*args, **kwargs)
        finally:
            elapsed = perf_counter() - start
            with self._lock:
                self.seconds += elapsed
                self.calls += 1


def _bare(codec: Any) -> Any:
    return codec


def _sources(node: BaseNode) -> Iterator[BaseNode]:
    """The nodes ``node`` holds in public attributes (directly, or in lists and dicts): its
    sources. Private ones (a ThreadMapNode's ``_mapper``) are its machinery, not stages."""
    stack: list[Any] = [v for k, v in vars(node).items() if not k.startswith("_")]
    while stack:
        value = stack.pop()
        if isinstance(value, BaseNode):
            yield value
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)


def stages(root: BaseNode) -> list[BaseNode]:
    """The nodes of the graph reached through public attributes, root first, once each."""
    out: list[BaseNode] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        todo.extend(_sources(node))
    return out


class Recorder:
    """The counters of one instrumented graph in this process, and its snapshot.

    Args:
        root (BaseNode): the graph; :func:`instrument` builds the Recorder and wraps the nodes.
    """

    def __init__(self, root: BaseNode) -> None:
        self.nodes: dict[str, NodeCounters] = {}
        self.sample_nodes: list[str] = []  # the sources of batching nodes: they count samples
        self.codecs: list[_TimedCodec] = []
        self.policies: list[ErrorPolicy] = []
        self.downloaders: list[BaseNode] = []
        self.cache_dirs: set[str] = set()
        self.root = root

    def snapshot(self) -> dict[str, Any]:
        """This process's counters: ``nodes`` {name: {items, busy_s, wait_s}}, ``samples``,
        ``skipped`` {reason: n}, ``decode_s`` / ``decoded`` {codec: seconds / calls} and
        ``cache`` (``hits``, ``misses``, ``bytes_downloaded``, ``in_flight``) and ``compose``
        (the GCS compose counts of the downloaders, see ``FetchOptions.gcs_compose``)."""
        nodes = {name: c.as_dict() for name, c in self.nodes.items()}
        samples = sum(self.nodes[n].items for n in self.sample_nodes)
        skipped: dict[str, int] = {}
        for policy in self.policies:
            for reason, n in policy.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
        decode_s: dict[str, float] = {}
        decoded: dict[str, int] = {}
        for codec in self.codecs:
            decode_s[codec.name] = decode_s.get(codec.name, 0.0) + codec.seconds
            decoded[codec.name] = decoded.get(codec.name, 0) + codec.calls
        return {
            "samples": samples,
            "skipped": skipped,
            "nodes": nodes,
            "decode_s": decode_s,
            "decoded": decoded,
            "cache": self._cache_counters(),
            "compose": self._compose_counters(),
        }

    def _compose_counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.downloaders:
            for name, n in node.compose_counts.items():
                out[name] = out.get(name, 0) + n
        return out

    def _cache_counters(self) -> dict[str, int]:
        from sdsnodes.nodes._cache_ref import process_caches

        out = {"hits": 0, "misses": 0, "bytes_downloaded": 0, "in_flight": 0}
        for cache in process_caches(self.cache_dirs):
            counters = cache.process_counters()
            out["hits"] += counters["hits"]
            out["misses"] += counters["misses"]
            out["bytes_downloaded"] += counters["bytes_fetched"]
        for node in self.downloaders:
            out["in_flight"] += int(getattr(node, "in_flight", 0))
        return out


def unwrap(root: BaseNode) -> None:
    """Remove the wrappers an earlier :func:`instrument` put on this graph (a copied graph
    keeps them, pointing at the original's counters)."""
    for node in stages(root):
        if getattr(vars(node).get("next"), "sds_counters", None) is not None:
            del node.next
        codecs = vars(node).get("codecs")
        if isinstance(codecs, dict):
            for column, codec in codecs.items():
                if isinstance(codec, _TimedCodec):
                    codecs[column] = codec.codec


def instrument(root: BaseNode) -> Recorder:
    """Wrap each stage's ``next`` and each Decoder codec of ``root`` with timers; the Recorder
    that reads them. Instrumenting a graph again starts its counters afresh."""
    from sdsnodes.nodes.downloader import CachingDownloader
    from sdsnodes.nodes.graph import iter_nodes

    unwrap(root)
    recorder = Recorder(root)
    names: collections.Counter[str] = collections.Counter()
    by_node: dict[int, str] = {}
    parents: dict[int, NodeCounters] = {}
    for node in stages(root):
        kind = type(node).__name__
        names[kind] += 1
        name = kind if names[kind] == 1 else f"{kind}_{names[kind]}"
        by_node[id(node)] = name
        counters = recorder.nodes[name] = NodeCounters()
        parent = parents.get(id(node))
        node.next = _timed_next(counters, parent, node.next)  # type: ignore[method-assign]
        for source in _sources(node):
            parents.setdefault(id(source), counters)
        codecs = vars(node).get("codecs")
        if isinstance(codecs, dict) and all(callable(c) for c in codecs.values()):
            for column, codec in codecs.items():
                codecs[column] = _TimedCodec(codec, type(codec).__name__)
                recorder.codecs.append(codecs[column])
    batching = [n for n in stages(root) if isinstance(getattr(n, "batch_size", None), int)]
    recorder.sample_nodes = sorted({by_node[id(s)] for n in batching for s in _sources(n)})
    if not recorder.sample_nodes:
        recorder.sample_nodes = [by_node[id(root)]]
    for node in iter_nodes(root):
        recorder.policies += [v for v in vars(node).values() if isinstance(v, ErrorPolicy)]
        cache_dir = getattr(node, "cache_dir", None)
        if isinstance(cache_dir, str):
            recorder.cache_dirs.add(os.path.abspath(cache_dir))
        if isinstance(node, CachingDownloader):
            recorder.downloaders.append(node)
    return recorder
