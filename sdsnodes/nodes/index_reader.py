"""IndexReader: the leaf of every graph: rows of an index, this (rank, worker)'s share of them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from sdsnodes.distributed import broadcast_from_rank0, can_broadcast
from sdsnodes.index.sources import read_index
from sdsnodes.index.table import IndexTable
from sdsnodes.nodes._epoch import EpochReader


def _read_once(src: str | os.PathLike, storage_options: dict[str, Any] | None) -> pa.Table:
    """Read the index on rank 0 and broadcast it (Arrow IPC) when a process group is up."""
    if not can_broadcast():
        return read_index(src, storage_options)

    def read() -> bytes:
        sink = pa.BufferOutputStream()
        table = read_index(src, storage_options)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    return pa.ipc.open_stream(broadcast_from_rank0(read)).read_all()


class IndexReader(EpochReader):
    """Yield the rows of an index as sample dicts, in index order, sharded over (rank, worker).

    Reads parquet, CSV, JSON, JSONL, a directory of media files (one row per file, with ``path``,
    ``size`` and a ``video``/``image``/``audio``/``latent`` column by extension), a wildcard of
    index files, or a ``.txt`` file of paths — local or through fsspec URLs. The index is read at
    construction, so a bad source fails at once; under ``torch.distributed`` rank 0 reads it and
    broadcasts it to the other ranks.

    Each sample holds every column (missing ones are None) plus ``__key__`` (str), ``__index__``
    (int, the row) and ``__epoch__`` (int). The shard with id ``s`` of ``S = world_size *
    num_workers`` reads rows ``s, s + S, …``. Each ``reset()`` without state starts the next epoch.

    Args:
        src (str | os.PathLike | pyarrow.Table): the index source, or a table already in memory.
        columns (Sequence[str] | None): columns to add as None where the index lacks them.
        storage_options (dict | None): fsspec options for a remote source.
        name (str | None): prefix of ``__key__`` (``"name/row"``), e.g. the stream name.
        rank (int | None), world_size (int | None): explicit distributed position; by default
            from ``torch.distributed`` or ``RANK``/``WORLD_SIZE``.
        uneven (str | None): ``"pad"``, ``"drop"`` or ``"keep"`` when rows do not split evenly
            over the shards; None pads when ``world_size > 1`` (equal batches on every rank).

    State:
        ``{"epoch": int, "position": int}`` — the next local position to read — plus the layout
        it was saved under (``shard``, ``num_shards``, ``num_rows``, ``base``, ``skip``,
        ``reader``), checked on resume and used by elastic resume.

    Raises:
        ValueError: the source is missing, unreadable or empty (the message names it and the fix).
    """

    def __init__(
        self,
        src: str | os.PathLike | pa.Table,
        columns: Sequence[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        name: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        uneven: str | None = None,
    ) -> None:
        super().__init__(rank, world_size, uneven)
        self.src = src if isinstance(src, pa.Table) else os.fspath(src)
        table = src if isinstance(src, pa.Table) else _read_once(src, storage_options)
        if table.num_rows == 0:
            raise ValueError("the index table has no rows: nothing to stream")
        self._index = IndexTable(table, columns=columns, name=name)

    @property
    def column_names(self) -> list[str]:
        """Columns present in the index file(s)."""
        return list(self._index.table.column_names)
