"""IndexReader: the leaf of every graph: rows of an index, this (rank, worker)'s share of them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from sdsnodes.distributed import broadcast_from_rank0, can_broadcast
from sdsnodes.index.filters import parse_filter
from sdsnodes.index.footers import auto_footers, read_footers
from sdsnodes.index.lazy import CHUNK_ROWS, LANES, LazyIndexTable
from sdsnodes.index.materialize import materialize
from sdsnodes.index.table import IndexTable
from sdsnodes.nodes._index_options import (
    capped_files,
    lazy_rename,
    materialize_files,
    read_grouped,
    shape,
)
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.options import IndexOptions


def _load(
    src: str | os.PathLike | pa.Table,
    storage_options: dict[str, Any] | None,
    options: IndexOptions,
    index_cache_dir: str | None,
    lazy_options: dict[str, Any],
) -> IndexTable | LazyIndexTable:
    """The index and its fingerprint; under torch.distributed, checked equal on all ranks."""
    filter, rename, txt, lazy = options.filter, options.rename, options.txt, options.lazy  # noqa: A001
    if isinstance(src, pa.Table):
        if lazy:
            raise ValueError(
                "lazy=True reads a parquet index at a path or URL, not a table in memory"
            )
        if options.max_index_files is not None:
            raise ValueError(
                "IndexOptions(max_index_files=...) caps the files of a wildcard or .txt index, "
                "and the index is a table in memory: pass max_rows=... instead"
            )
        table = src.rename_columns([(rename or {}).get(c, c) for c in src.column_names])
        table = table.filter(parse_filter(filter)) if filter is not None else table
        table, key = shape(table, "table", options, "<table>")
        if table.num_rows == 0:
            raise ValueError("the index table has no rows: nothing to stream")
        return IndexTable(table, **lazy_options["table"], fingerprint=key)
    url = os.fspath(src)
    files = capped_files(url, storage_options, options)
    footers = read_footers(url, storage_options, txt, files) if lazy else None
    if lazy is None and files is None and options.group_by_key is None:
        footers = auto_footers(url, storage_options, txt, filter)
    if footers is not None:
        names = pa.unify_schemas(
            [m.schema.to_arrow_schema() for m in footers.metadata], promote_options="permissive"
        ).names
        index: IndexTable | LazyIndexTable = LazyIndexTable(
            footers, **lazy_options["table"], rename=lazy_rename(options, names, url),
            storage_options=storage_options, filter=filter, max_rows=options.max_rows,
            **lazy_options["lazy"],
        )  # fmt: skip
    elif options.group_by_key is not None:  # a directory, grouped as asked, in memory
        table, key = read_grouped(url, storage_options, options)
        table, key = shape(table, key, options, url)
        index = IndexTable(table, **lazy_options["table"], fingerprint=key)
    else:
        if files is not None:
            table, key = materialize_files(files, storage_options, options, index_cache_dir)
        else:
            table, key = materialize(
                url, storage_options, filter=filter, rename=rename, cache_dir=index_cache_dir,
                txt=txt,
            )  # fmt: skip
        table, key = shape(table, key, options, url)
        index = IndexTable(table, **lazy_options["table"], fingerprint=key)
    if can_broadcast():  # each machine converted (or found) its own copy: all must agree
        import torch.distributed as dist

        theirs = broadcast_from_rank0(lambda: index.fingerprint)
        if theirs != index.fingerprint:
            raise ValueError(
                f"rank {dist.get_rank()} sees index {src!r} as {index.fingerprint}, rank 0 as "
                f"{theirs}: the source differs between machines (a file changed while the job "
                "started?)"
            )
    return index


class IndexReader(EpochReader):
    """Yield the rows of an index as sample dicts, in index order, sharded over (rank, worker).

    Reads parquet, CSV, JSON, JSONL, a directory of media files (one row per file, with ``path``,
    ``size`` and a ``video``/``image``/``audio``/``latent`` column by extension), a wildcard of
    index files, or a ``.txt`` file that lists either media files (one sample per line) or index
    shards (like SDS's ``split_file_paths.txt``; see ``txt``) — local or through fsspec URLs.

    Two ways to hold the index (``lazy``):

    - converted (the default for most indexes): once per machine, under a file lock, into a
      memory-mapped Arrow file in the index cache (see :mod:`sdsnodes.index.materialize`). The
      first conversion downloads and copies the whole index uncompressed; after it the index
      opens in milliseconds, in constant memory, and any row is a page fault away.
    - lazy (remote parquet too big to copy to every machine): only the parquet footers are read
      up front; rows are fetched by row groups on demand into a small in-memory LRU, nothing
      on disk, and a shuffled epoch reads row groups in lanes rather than at random (see
      :mod:`sdsnodes.index.lazy`); the next chunk is fetched in the background. A ``filter``
      is counted per chunk at construction, reading only the filter's columns, and applied to
      each chunk as it is read; ``max_rows`` cuts the chunks (footers only, without a filter).

    A bad source fails at construction. Under ``torch.distributed`` the ranks check that they
    all see the same index (its fingerprint).

    Each sample holds every column (missing ones are None) plus ``__key__`` (str), ``__index__``
    (int, the row) and ``__epoch__`` (int). The shard with id ``s`` of ``S = world_size *
    num_workers`` reads positions ``s, s + S, …``. Each ``reset()`` without state starts the
    next epoch.

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
        txt (str | None): what a ``.txt`` source lists: ``"index"`` (index shards),
            ``"media"`` (media files), or None to tell by the lines' extensions.
        lazy (bool | None): True reads a parquet index lazily (by row groups, on demand);
            False converts it to a local memory-mapped file; None (default) is lazy for remote
            parquet past :data:`~sdsnodes.index.footers.LAZY_AUTO_BYTES` (1 GiB) uncompressed
            (with a ``filter`` or ``max_rows`` too).
        lazy_chunk_rows (int): lazy only: rows fetched at once — consecutive row groups of a
            file are read together up to this many rows (a bigger row group is read whole).
        lazy_lanes (int): lazy only: chunks a shuffled epoch reads side by side (more lanes mix
            more row groups into each batch and keep more chunks in memory: ``lanes / gcd(lanes,
            world_size * num_workers) + 1`` per reader).
        lazy_prefetch (bool): lazy only: fetch the chunk after the one just read in a
            background thread (one chunk in flight).
        index (IndexOptions | None): the same ``filter``, ``rename``, ``txt`` and ``lazy`` as a
            group (as presets take them), plus ``key_column``, ``max_rows`` and
            ``max_index_files`` (see :class:`~sdsnodes.IndexOptions`); a setting given both
            here and as a keyword is refused.

    State:
        :class:`~sdsnodes.nodes.epoch_reader.EpochReader`'s: the epoch and the next local
        position to read (``EPOCH_KEY``, ``POSITION_KEY``), plus the layout it was saved under,
        checked on resume and used by elastic resume, and the tag ``STATE_TAG``.

    Raises:
        ValueError: the source is missing, unreadable or empty, or ``lazy=True`` meets a source
            that is not parquet, or a filter naming an absent column (the message names it and
            the fix).
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
        txt: str | None = None,
        lazy: bool | None = None,
        lazy_chunk_rows: int = CHUNK_ROWS,
        lazy_lanes: int = LANES,
        lazy_prefetch: bool = True,
        index: IndexOptions | None = None,
    ) -> None:
        super().__init__(rank, world_size, uneven)
        if lazy not in (True, False, None):
            raise ValueError(f"{lazy=} must be True, False or None (lazy for big remote parquet)")
        if index is not None and not isinstance(index, IndexOptions):
            raise TypeError(
                f"index= takes an IndexOptions, e.g. index=IndexOptions(...), not {index!r}"
            )
        index = (index or IndexOptions()).merged(
            "IndexReader", filter=filter, rename=rename, txt=txt, lazy=lazy
        )
        if lazy_chunk_rows < 1 or lazy_lanes < 1:
            raise ValueError(f"{lazy_chunk_rows=} and {lazy_lanes=} must be >= 1")
        self.src = src if isinstance(src, pa.Table) else os.fspath(src)
        options = {
            "table": {"columns": columns, "name": name},
            "lazy": {"chunk_rows": lazy_chunk_rows, "lanes": lazy_lanes, "prefetch": lazy_prefetch},
        }
        self._index = _load(src, storage_options, index, index_cache_dir, options)

    @property
    def lazy(self) -> bool:
        """Whether the index is read lazily, by row groups (see :mod:`sdsnodes.index.lazy`)."""
        return isinstance(self._index, LazyIndexTable)

    @property
    def column_names(self) -> list[str]:
        """Columns present in the index file(s)."""
        return self._index.column_names
