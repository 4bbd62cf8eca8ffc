"""StreamOpener: each sample (one long file) becomes a :class:`Stream` of chunks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Protocol

from torchdata.nodes import BaseNode

from sdsnodes.codecs.base import Decoded
from sdsnodes.nodes._cache_ref import release
from sdsnodes.sample import CACHE_DIR, KEY, Sample

CHUNK = "__chunk__"
"""``chunk[CHUNK]``: the chunk's number in its stream (int, 0 for the first)."""


class Chunker(Protocol):
    """Anything with ``chunks(value, start) -> Iterator[chunk]`` (see :mod:`sdsnodes.codecs.chunks`)."""

    def chunks(self, value: Any, start: int = 0) -> Iterator[Any]: ...


@dataclasses.dataclass
class Stream:
    """One long file as chunks: the sample it came from and how to cut it.

    Args:
        sample (dict): the index row (its ``column`` a local path or bytes, its files pinned in
            the cache until :meth:`close`).
        column (str): the column holding the file.
        chunker (Chunker): cuts the file.
    """

    sample: Sample
    column: str
    chunker: Chunker

    @property
    def key(self) -> str:
        """The sample's ``__key__``."""
        return str(self.sample.get(KEY))

    def chunks(self, start: int = 0) -> Iterator[Sample]:
        """Chunk samples ``start, start + 1, …``: the row's columns, ``column`` replaced by the
        chunk (facts of a :class:`~sdsnodes.codecs.Decoded` under ``"<column>.<name>"``) and
        ``__chunk__`` its number.

        Raises:
            DecodeError: as the chunker raises it (the file is bad, or breaks off mid-way).
        """
        row = {k: v for k, v in self.sample.items() if k != CACHE_DIR}
        for number, chunk in enumerate(self.chunker.chunks(self.sample[self.column], start), start):
            out = dict(row)
            if isinstance(chunk, Decoded):
                out[self.column] = chunk.value
                out.update({f"{self.column}.{name}": v for name, v in chunk.info.items()})
            else:
                out[self.column] = chunk
            out[CHUNK] = number
            yield out

    def close(self) -> None:
        """Unpin the sample's cached files (idempotent)."""
        release(self.sample)


class StreamOpener(BaseNode[Stream]):
    """Turn each sample of ``source`` into a :class:`Stream` of its ``column`` cut by ``chunker``.

    Nothing is decoded here: the :class:`~sdsnodes.nodes.stream_batcher.StreamBatcher` reads
    each stream's chunks as its row needs them.

    Args:
        source (BaseNode): yields samples whose ``column`` holds a local path or bytes (put a
            CachingDownloader before for URLs).
        column (str): the column of long files.
        chunker (Chunker): e.g. :class:`~sdsnodes.codecs.chunks.VideoChunks`.

    State:
        ``{SOURCE_KEY: <source state>}``.

    Raises:
        ValueError: ``chunker`` has no ``chunks`` method.
    """

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode, column: str, chunker: Chunker) -> None:
        super().__init__()
        if not callable(getattr(chunker, "chunks", None)):
            raise ValueError(f"{chunker=} needs a chunks(value, start) method, e.g. VideoChunks")
        self.source, self.column, self.chunker = source, str(column), chunker

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset((initial_state or {}).get(self.SOURCE_KEY))

    def next(self) -> Stream:
        return Stream(next(self.source), self.column, self.chunker)

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}
