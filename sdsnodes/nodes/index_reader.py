"""IndexReader: the leaf of every graph: rows of an index, this (rank, worker)'s share of them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from sdsnodes.distributed import broadcast_from_rank0, can_broadcast
from sdsnodes.index.filters import parse_filter
from sdsnodes.index.materialize import materialize
from sdsnodes.index.table import IndexTable
from sdsnodes.nodes.epoch_reader import EpochReader


def _load(
    src: str | os.PathLike | pa.Table,
    storage_options: dict[str, Any] | None,
    filter: Any,  # noqa: A002
    rename: dict[str, str] | None,
    index_cache_dir: str | None,
) -> tuple[pa.Table, str]:
    """The index table and its fingerprint; under torch.distributed, checked equal on all ranks."""
    if isinstance(src, pa.Table):
        table = src.rename_columns([(rename or {}).get(c, c) for c in src.column_names])
        table = table.filter(parse_filter(filter)) if filter is not None else table
        return table, "table"
    table, key = materialize(
        src, storage_options, filter=filter, rename=rename, cache_dir=index_cache_dir
    )
    if can_broadcast():  # each machine converted (or found) its own copy: all must agree
        import torch.distributed as dist

        theirs = broadcast_from_rank0(lambda: key)
        if theirs != key:
            raise ValueError(
                f"rank {dist.get_rank()} sees index {src!r} as {key}, rank 0 as {theirs}: the "
                "source differs between machines (a file changed while the job started?)"
            )
    return table, key


class IndexReader(EpochReader):
    """Yield the rows of an index as sample dicts, in index order, sharded over (rank, worker).

    Reads parquet, CSV, JSON, JSONL, a directory of media files (one row per file, with ``path``,
    ``size`` and a ``video``/``image``/``audio``/``latent`` column by extension), a wildcard of
    index files, or a ``.txt`` file of paths — local or through fsspec URLs. At construction the
    source is converted once (per machine, under a file lock) into a memory-mapped Arrow file in
    the index cache (see :mod:`sdsnodes.index.materialize`): an index of any size opens in
    constant memory, and a bad source fails at once. Under ``torch.distributed`` the ranks check
    that they all see the same index.

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
        filter (str | pyarrow.compute.Expression | None): keep only rows matching it, e.g.
            ``"aesthetic > 5 and caption is not None"`` (see :mod:`sdsnodes.index.filters`).
        rename (dict[str, str] | None): rename columns (old → new) as the index is read.
        index_cache_dir (str | None): where converted indexes live (``<cache>/index``).

    State:
        :class:`~sdsnodes.nodes.epoch_reader.EpochReader`'s: the epoch and the next local
        position to read (``EPOCH_KEY``, ``POSITION_KEY``), plus the layout it was saved under,
        checked on resume and used by elastic resume, and the tag ``STATE_TAG``.

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
        filter: Any = None,  # noqa: A002 - the field's word
        rename: dict[str, str] | None = None,
        index_cache_dir: str | None = None,
    ) -> None:
        super().__init__(rank, world_size, uneven)
        self.src = src if isinstance(src, pa.Table) else os.fspath(src)
        table, fingerprint = _load(src, storage_options, filter, rename, index_cache_dir)
        if table.num_rows == 0:
            raise ValueError("the index table has no rows: nothing to stream")
        self._index = IndexTable(table, columns=columns, name=name, fingerprint=fingerprint)

    @property
    def column_names(self) -> list[str]:
        """Columns present in the index file(s)."""
        return list(self._index.table.column_names)
