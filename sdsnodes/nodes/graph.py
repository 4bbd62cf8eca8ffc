"""Walking a graph of nodes: its nodes, setting the epoch of its readers, shutting it down."""

from __future__ import annotations

from collections.abc import Iterator

from torchdata.nodes import BaseNode


def iter_nodes(root: BaseNode) -> Iterator[BaseNode]:
    """Every node reachable from ``root`` (through attributes, lists and dicts), once each."""
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, BaseNode):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            yield obj
            stack.extend(vars(obj).values())
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)


def set_epoch(root: BaseNode, epoch: int) -> None:
    """Make the next ``root.reset()`` start ``epoch`` in every reader of the graph."""
    for node in iter_nodes(root):
        setter = getattr(node, "set_epoch", None)
        if callable(setter):
            setter(epoch)


def shutdown(root: BaseNode) -> None:
    """Stop the threads of every node of the graph that runs any: ours (``shutdown()``) and
    torchdata's ``Prefetcher``/``ParallelMapper``/``PinMemory`` (their iterator's ``_shutdown``)."""
    for node in iter_nodes(root):
        stop = getattr(node, "shutdown", None)
        if callable(stop):
            stop()
            continue
        inner = getattr(node, "_it", None)
        while inner is not None and not callable(getattr(inner, "_shutdown", None)):
            inner = getattr(inner, "_it", None)
        if inner is not None:
            inner._shutdown()
