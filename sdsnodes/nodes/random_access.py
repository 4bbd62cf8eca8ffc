"""Random access: run a graph's per-sample chain (download, decode, release) on one row.

The nodes' own per-sample methods do the work (``CachingDownloader.process``,
``Decoder.process``, Evictor's release), so ``dataset[i]`` and streaming share one
implementation, one cache, one ledger and one budget.
"""

from __future__ import annotations

from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.nodes._cache_ref import release
from sdsnodes.nodes._threads import ThreadMapNode
from sdsnodes.nodes.downloader import CachingDownloader
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.evictor import Evictor
from sdsnodes.nodes.mixer import Mixer
from sdsnodes.sample import STREAM, Sample


def chain_to_reader(root: BaseNode, stream: str | None = None) -> list[BaseNode]:
    """The nodes from ``root`` down to the reader that feeds it (following ``source``), choosing
    ``stream`` at a Mixer.

    Raises:
        KeyError: the graph has a Mixer and ``stream`` does not name one of its streams.
        ValueError: the graph has no reader at the end of its ``source`` links.
    """
    chain, node = [], root
    while True:
        chain.append(node)
        if isinstance(node, EpochReader):
            return chain
        if isinstance(node, Mixer):
            if stream not in node.streams:
                raise KeyError(f"name one of the mixed streams {node.names} (got {stream!r})")
            node, stream = node.streams[stream], None
            continue
        source = getattr(node, "source", None)
        if not isinstance(source, BaseNode):
            raise ValueError(
                f"{type(node).__name__} has no source node: cannot find the graph's IndexReader"
            )
        node = source


def get_sample(root: BaseNode, index: int, stream: str | None = None) -> Sample:
    """Download (through the cache) and decode row ``index``, blocking.

    Args:
        root (BaseNode): the graph.
        index (int): row of the index, in ``[0, len)``; negative counts from the end.
        stream (str | None): the stream, for a graph with a Mixer.

    Returns:
        dict: the sample as the graph would yield it before batching.

    Raises:
        IndexError: ``index`` out of range.
        Exception: any download or decode error (random access never skips).
    """
    chain = chain_to_reader(root, stream)
    reader = chain[-1]
    n = len(reader.index)
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {n} rows")
    sample = reader.index.sample(index % n, epoch=0)
    try:
        for node in reversed(chain[:-1]):
            if isinstance(node, (ThreadMapNode, CachingDownloader)):
                sample = node.process(sample)
            elif isinstance(node, Evictor):
                release(sample)
    finally:
        release(sample)
    if stream is not None:
        sample[STREAM] = stream
    return sample


def find_row(root: BaseNode, key: str) -> tuple[int, str | None]:
    """The (row, stream) whose ``__key__`` is ``key`` ("row", "name/row" or a ``__key__`` value).

    Raises:
        KeyError: no row has that key.
    """
    streams: list[Any] = [None]
    if isinstance(root, Mixer):
        streams = root.names
    for stream in streams:
        reader = chain_to_reader(root, stream)[-1]
        row = reader.index.row_of(key)
        if row is not None:
            return row, stream
    raise KeyError(f"no sample has __key__ {key!r}")
