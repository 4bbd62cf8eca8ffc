"""Walking a graph of nodes and a tree of their states: one walker for both.

``iter_nodes`` visits the nodes of a graph (its readers, its Mixers), ``iter_states`` the dicts
of a saved state (a node's, a ``Loader``'s or a ``StatefulDataLoader``'s, any number of workers
deep). States that other code must find in a tree (elastic resume finds the readers' and the
Mixers') carry a tag, ``state[NODE_KEY]``, the node's ``STATE_TAG`` constant: they are found by
that tag, never by the set of their keys.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from torchdata.nodes import BaseNode

NODE_KEY = "__node__"
"""The key of a state's tag: ``{NODE_KEY: EpochReader.STATE_TAG, ...}``."""


def _walk(root: object, open_: Callable[[object], Iterable[object] | None]) -> Iterator[object]:
    """Every dict, list and tuple reachable from ``root``, and every other object that ``open_``
    opens (returns its children for; None: a leaf, not yielded), parents before children; an
    opened object once, however many times it is reached."""
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            children: Iterable[object] | None = obj.values()
        elif isinstance(obj, (list, tuple)):
            children = obj
        else:
            children = open_(obj)
            if children is None or id(obj) in seen:
                continue
            seen.add(id(obj))
        yield obj
        stack.extend(children)


def iter_nodes(root: BaseNode) -> Iterator[BaseNode]:
    """Every node reachable from ``root`` (through attributes, lists and dicts), once each."""
    opened = _walk(root, lambda o: vars(o).values() if isinstance(o, BaseNode) else None)
    return (obj for obj in opened if isinstance(obj, BaseNode))


def iter_states(state: Any) -> Iterator[dict]:
    """Every dict in a state tree (through dicts, lists and tuples), ``state`` itself first."""
    return (obj for obj in _walk(state, lambda o: None) if isinstance(obj, dict))


def find_states(state: Any, tag: str, legacy_keys: Collection[str] = ()) -> list[dict]:
    """The states tagged ``tag`` (``d[NODE_KEY] == tag``) in a state tree.

    A tree saved before states were tagged (no dict in it has :data:`NODE_KEY`) is read by the
    keys instead: its dicts that hold every key of ``legacy_keys`` (none when empty).
    """
    states = list(iter_states(state))
    if any(NODE_KEY in d for d in states):
        return [d for d in states if d.get(NODE_KEY) == tag]
    return [d for d in states if legacy_keys and all(k in d for k in legacy_keys)]


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
