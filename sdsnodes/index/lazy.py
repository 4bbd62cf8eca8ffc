"""A lazy index: remote parquet read by row groups on demand, never copied whole.

:mod:`~sdsnodes.index.materialize` copies any index, uncompressed, into a memory-mapped file on
every machine: the right default for an index of up to a few GB (it opens in milliseconds after
the first conversion, and any row costs a page fault). For a remote parquet index of billions of
rows that copy costs each machine its disk, and the first start the whole download. SDS's
``lazy_index_chunk_size`` read such an index in chunks instead; :class:`LazyIndexTable` does
that here:

- **What is known up front comes from the footers only**: each file's parquet footer (read in
  parallel, a few KB each) gives the row count, the schema and the row-group boundaries. The
  rows are numbered as the materialized copy numbers them (files in source order, row groups in
  file order), so ``__index__`` and ``__key__`` do not depend on ``lazy``.
- **Rows are fetched by chunks on demand**: a chunk is one row group, or several consecutive
  small row groups of one file up to ``chunk_rows`` rows (read in one ``read_row_groups`` call
  whose column ranges pyarrow coalesces). The row a reader asks for pulls its chunk into a small
  LRU of decoded Arrow columns — a bounded *count* of chunks, nothing on disk. Memory is then
  ``max_chunks × (bytes of a chunk)``; a row group larger than ``chunk_rows`` cannot be split (a
  parquet row group is the smallest readable unit), so it is read whole and a warning says so.
- **The shuffle reads chunks, not rows**: a global permutation would make nearly every row a
  new chunk fetch. :meth:`LazyIndexTable.localize` turns the order a Shuffler gives (any mode)
  into a :class:`~sdsnodes.index.permutation.LanePermutation` keyed by it — chunks in a random
  order, cut into ``lanes`` lanes walked side by side, rows permuted within each chunk — so a
  reader of shard ``s`` of ``S`` (positions ``s, s + S, …``, the one sharding rule of
  :mod:`~sdsnodes.nodes.epoch_reader`) reads ``lanes / gcd(lanes, S)`` chunks at a time, each
  once per epoch; when ``S`` divides ``lanes`` (powers of two: 16 lanes, 8 ranks × 2 workers)
  each chunk is fetched by one reader only. The order is still a pure function of (seed, epoch)
  and independent of the layout, so exact resume (state = epoch + position) and elastic resume
  work unchanged. Unshuffled, each reader walks the chunks in order (every reader fetches every
  chunk, one or two in memory).
  Why lanes and not :class:`~sdsnodes.index.permutation.ChunkPermutation` (rows permuted
  within windows of chunks): the shards interleave positions, so with a window every one of
  ``S`` readers would touch every chunk of each window — ``S`` times the fetches. Why the order
  is keyed by the Shuffler's values rather than by its seed: the Shuffler stays the one way to
  shuffle and hands its reader an order, not a seed; the first values of that order are a pure
  function of (seed, epoch), which is all a key needs to be.
- **The fingerprint** hashes each file's path, size and ETag/mtime (as materialize's does) plus
  ``lazy``'s options, which define the shuffled order.
- **Renames** apply per chunk, and so do **filters and** ``max_rows``: positions must be known
  up front (sharding, equal batches per rank, resume), so construction counts the rows a
  filter keeps in each chunk, reading the filter's columns only (:mod:`._lazy_rows`); a read
  chunk is filtered again and cut to its count.

A chunk is one ranged GET (pyarrow coalesces its column ranges), retried on transient errors
by the downloads' :class:`~sdsnodes._retry.Retrier`. With ``prefetch`` (the default) the chunk
that follows the one just read (the next in index order, or the next of its lane) is fetched
by one background thread, so a reader walking its lanes rarely waits; one chunk in flight.

``lazy=None`` (IndexReader's default) picks lazy for a remote parquet index (files, a wildcard or
a ``.txt`` of shards) whose footers say it holds more than
:data:`~sdsnodes.index.footers.LAZY_AUTO_BYTES` uncompressed; everything else is materialized.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdsnodes.index._lazy_read import ChunkReading, result_of
from sdsnodes.index._lazy_rows import kept_rows, plan_rows
from sdsnodes.index.filters import filter_columns, parse_filter
from sdsnodes.index.footers import Footers
from sdsnodes.index.materialize import fingerprint_files
from sdsnodes.index.permutation import LanePermutation
from sdsnodes.index.sources import IndexSourceError
from sdsnodes.sample import EPOCH, INDEX, KEY, Sample

logger = logging.getLogger(__name__)

CHUNK_ROWS = 65_536
LANES = 16


@dataclasses.dataclass(frozen=True)
class _Chunk:
    file: int
    row_groups: tuple[int, ...]
    rows: int | None = None  # rows kept (after the filter, up to max_rows); None: all


class LazyIndexTable(ChunkReading):
    """Random access to the rows of a parquet index, fetched by chunks of row groups on demand.

    The same interface as :class:`~sdsnodes.index.table.IndexTable` (``len``, ``key``,
    ``sample``, ``row_of``, ``fingerprint``, ``columns``), plus :meth:`localize` for readers.

    Args:
        footers (Footers): the index's files and footers (:func:`~sdsnodes.index.footers.read_footers`).
        columns (Sequence[str] | None): columns every sample must have (missing ones: None).
        name (str | None): stream name prefixed to ``__key__``.
        rename (dict[str, str] | None): old column name → new one, applied per chunk.
        storage_options (dict | None): fsspec options to open the files with.
        chunk_rows (int): consecutive row groups of a file are read together up to this many
            rows, >= 1; a larger row group is one chunk of its own.
        lanes (int): chunks a shuffled epoch reads side by side (see :meth:`localize`), >= 1.
        max_chunks (int): chunks kept decoded in memory (an LRU), >= 1; readers raise it to
            what their shuffle needs (:meth:`localize`).
        filter (str | pyarrow.compute.Expression | None): keep only the rows matching it
            (column names after ``rename``); counted per chunk at construction, reading the
            filter's columns only (see :mod:`._lazy_rows`).
        max_rows (int | None): keep the first ``max_rows`` rows (after ``filter``), >= 1.
        prefetch (bool): fetch the chunk after the one just read in a background thread.

    Raises:
        IndexSourceError (ValueError): the files have incompatible schemas, ``rename`` or the
            filter names an absent column, or the index has no rows (after the filter).
        ValueError: ``chunk_rows``, ``lanes`` or ``max_chunks`` < 1.
    """

    def __init__(
        self,
        footers: Footers,
        columns: Sequence[str] | None = None,
        name: str | None = None,
        rename: dict[str, str] | None = None,
        storage_options: dict[str, Any] | None = None,
        chunk_rows: int = CHUNK_ROWS,
        lanes: int = LANES,
        max_chunks: int = 2,
        filter: Any = None,  # noqa: A002 - the field's word
        max_rows: int | None = None,
        prefetch: bool = True,
    ) -> None:
        if min(chunk_rows, lanes, max_chunks) < 1:
            raise ValueError(f"{chunk_rows=}, {lanes=} and {max_chunks=} must be >= 1")
        self.url, self.name = footers.url, name
        self.chunk_rows, self.lanes, self.max_chunks = chunk_rows, lanes, max_chunks
        self._files, self._metadata = footers.files, footers.metadata
        rename = dict(rename or {})
        try:
            schema = pa.unify_schemas(
                [m.schema.to_arrow_schema() for m in self._metadata], promote_options="permissive"
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise IndexSourceError(
                f"the files of index {self.url!r} have incompatible columns: {error}"
            ) from error
        missing = set(rename) - set(schema.names)
        if missing:
            raise IndexSourceError(
                f"rename names columns {sorted(missing)} absent from the index (it has {schema.names})"
            )
        self._schema = schema
        self.schema = pa.schema([f.with_name(rename.get(f.name, f.name)) for f in schema])
        self.columns = list(dict.fromkeys([*self.schema.names, *(columns or [])]))
        self._has_keys = KEY in self.schema.names
        self._rename, self._storage_options = rename, storage_options
        self._expression = None if filter is None else self._check_filter(filter)
        self.fetches = 0  # chunks read so far by this process
        self._chunks, self.starts = self._plan()
        if self._expression is not None or max_rows is not None:
            self._chunks, self.starts = self._select(filter, max_rows)
        if self.starts[-1] == 0:
            what = " after the filter" if filter is not None else ""
            raise IndexSourceError(f"index {self.url!r} has no rows{what}: nothing to stream")
        self.fingerprint = fingerprint_files(
            self.url, self._files, storage_options, rename=rename,
            lazy={"chunk_rows": chunk_rows, "lanes": lanes},
            **({} if filter is None else {"filter": str(filter)}),
            **({} if max_rows is None else {"max_rows": max_rows}),
        )  # fmt: skip
        self.duplicate_keys = 0  # unknown without reading every key: never checked lazily
        self.prefetch, self.prefetches = prefetch, 0  # chunks read ahead by the thread
        self._next: dict[int, int] = {}  # chunk -> the chunk its lane reads next (shuffled)
        self._reset_process()

    def _reset_process(self) -> None:
        """What each process holds for itself: open files, the LRU, the prefetch thread."""
        self._cache: OrderedDict[int, dict[str, pa.Array]] = OrderedDict()
        self._lock = threading.Lock()
        self._open: dict[int, pq.ParquetFile] = {}
        self._open_ahead: dict[int, pq.ParquetFile] = {}  # the prefetch thread's own files
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._pid = os.getpid()

    def _check_filter(self, filter: Any) -> pc.Expression:  # noqa: A002
        expression = parse_filter(filter)
        absent = sorted((filter_columns(filter) or set()) - set(self.schema.names))
        try:
            if absent:
                raise pa.ArrowInvalid(f"no column {absent}")
            self.schema.empty_table().filter(expression)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            raise IndexSourceError(
                f"the filter {str(filter)!r} does not fit index {self.url!r} (columns after "
                f"rename: {self.schema.names}): {error}"
            ) from error
        return expression

    def _select(self, filter: Any, max_rows: int | None) -> tuple[list[_Chunk], list[int]]:  # noqa: A002
        """The chunks that keep rows under ``filter`` / ``max_rows``, and their starts."""
        count = None
        if self._expression is not None:
            names = filter_columns(filter)
            original = {new: old for old, new in self._rename.items()}
            columns = None if names is None else [original.get(n, n) for n in sorted(names)]

            def count(c: int) -> int:
                arrays = self._read(self._chunks[c], {}, columns)
                return pa.table(arrays).filter(self._expression).num_rows

        sizes = [b - a for a, b in zip(self.starts, self.starts[1:])]
        kept = kept_rows(sizes, count, max_rows)
        planned, starts = plan_rows(self._chunks, kept)
        return [dataclasses.replace(c, rows=n) for c, n in planned], starts

    def _plan(self) -> tuple[list[_Chunk], list[int]]:
        chunks, starts, big = [], [0], 0
        for n, meta in enumerate(self._metadata):
            group: list[int] = []
            rows = 0
            for g in range(meta.num_row_groups):
                size = meta.row_group(g).num_rows
                if size == 0:
                    continue
                if group and rows + size > self.chunk_rows:
                    chunks.append(_Chunk(n, tuple(group)))
                    starts.append(starts[-1] + rows)
                    group, rows = [], 0
                group.append(g)
                rows += size
                big = max(big, size)
            if group:
                chunks.append(_Chunk(n, tuple(group)))
                starts.append(starts[-1] + rows)
        if big > 4 * self.chunk_rows:
            logger.warning(
                "index %s has row groups of up to %d rows, more than lazy_chunk_rows=%d: a row "
                "group is read whole, so each chunk in memory holds that many rows; write the "
                "index with smaller row groups (pyarrow: row_group_size=) to use less memory",
                self.url,
                big,
                self.chunk_rows,
            )
        return chunks, starts

    # -- what readers use ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.starts[-1]

    def __deepcopy__(self, memo: dict) -> LazyIndexTable:
        return self  # read-only: copies of a graph share it (each process has its own cache)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_cache", "_lock", "_open", "_open_ahead", "_pool", "_pending"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process()

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    @property
    def column_names(self) -> list[str]:
        """Columns present in the index file(s), after renames."""
        return list(self.schema.names)

    @property
    def table(self) -> pa.Table:
        """The first chunk only, as a sample of the index's values: the whole index is never in
        memory (``len(index)`` is its row count)."""
        return self.head()

    def head(self) -> pa.Table:
        """The first chunk of rows (at most ``chunk_rows``, or one row group)."""
        return pa.table(self._chunk(0), schema=self.schema)

    def cached_bytes(self) -> int:
        """Bytes of the chunks held in memory now."""
        return sum(a.nbytes for chunk in list(self._cache.values()) for a in chunk.values())

    def localize(
        self, rows: Callable[[int], int] | None, num_shards: int
    ) -> LanePermutation | None:
        """The order an epoch reads this index in, for a reader that is one of ``num_shards``.

        ``rows`` (the order a Shuffler gave, or None for index order) keys a
        :class:`~sdsnodes.index.permutation.LanePermutation` over the chunks: its first values
        are the key, so the lazy order is as much a pure function of (seed, epoch) as ``rows``
        and every process computes the same one. Sizes the LRU to the chunks such a reader
        has open at once: ``lanes / gcd(lanes, num_shards) + 1`` (2 in index order).
        """
        if rows is None:
            self.reserve(2)
            self._next = {}
            return None
        key = tuple(int(rows(i)) for i in range(min(len(self), 4)))
        order = LanePermutation(self.starts, self.lanes, len(self), *key)
        slots = order.chunk_order
        self._next = dict(zip(slots, slots[1:]))
        self.reserve(order.lanes // math.gcd(order.lanes, num_shards) + 1)
        return order

    def reserve(self, chunks: int) -> None:
        """Keep at least ``chunks`` chunks in memory."""
        self.max_chunks = max(self.max_chunks, int(chunks))

    # -- rows ------------------------------------------------------------------------------------
    def key(self, index: int) -> str:
        """The ``__key__`` of row ``index``: the ``__key__`` column, else the row number."""
        if self._has_keys:
            chunk = bisect.bisect_right(self.starts, index) - 1
            raw = self._chunk(chunk)[KEY][index - self.starts[chunk]].as_py()
        else:
            raw = str(index)
        return f"{self.name}/{raw}" if self.name else str(raw)

    def row_of(self, key: str) -> int | None:
        """The row whose ``__key__`` is ``key``, or None.

        Raises:
            ValueError: the index has a ``__key__`` column: finding a key would read all of it;
                look rows up by number, or pass ``lazy=False``.
        """
        if self._has_keys:
            raise ValueError(
                f"index {self.url!r} is lazy and has a __key__ column: a lookup by key would read "
                "every row group; access rows by number (dataset[i]) or pass lazy=False"
            )
        prefix = f"{self.name}/" if self.name else ""
        raw = key[len(prefix) :] if key.startswith(prefix) else None
        return int(raw) if raw is not None and raw.isdigit() and int(raw) < len(self) else None

    def sample(self, index: int, epoch: int = 0) -> Sample:
        """Row ``index`` as a sample dict with ``__key__``, ``__index__``, ``__epoch__``; fetches
        its chunk unless it is in memory.

        Raises:
            IndexError: ``index`` is outside ``[0, len(self))``.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} outside an index of {len(self)} rows")
        chunk = bisect.bisect_right(self.starts, index) - 1
        arrays, local = self._chunk(chunk), index - self.starts[chunk]
        raw = arrays[KEY][local].as_py() if self._has_keys else str(index)
        out: dict[str, Any] = {
            KEY: f"{self.name}/{raw}" if self.name else str(raw),
            INDEX: index,
            EPOCH: epoch,
        }
        for column in self.columns:
            if column == KEY:  # set above, with the stream name
                continue
            array = arrays.get(column)
            out[column] = array[local].as_py() if array is not None else None
        return out

    # -- chunks ----------------------------------------------------------------------------------
    def _chunk(self, chunk: int) -> dict[str, pa.Array]:
        with self._lock:
            if (
                self._pid != os.getpid()
            ):  # a forked child: its parent's files and thread are not its own
                self._reset_process()
                return self._chunk(chunk)
            arrays = self._cache.get(chunk)
            if arrays is not None:
                self._cache.move_to_end(chunk)
            else:
                ahead = self._pending.pop(chunk, None)
                arrays = result_of(ahead) if ahead is not None else None  # the thread takes no lock
                if arrays is None:
                    arrays = self._rows_of(chunk, self._open)
                self.fetches += 1
                self._cache[chunk] = arrays
                while len(self._cache) > self.max_chunks:
                    self._cache.popitem(last=False)
            self._read_ahead(chunk)
            return arrays

    def _read_ahead(self, chunk: int) -> None:
        """Start fetching the chunk read after ``chunk`` (called under the lock)."""
        after = self._next.get(chunk, chunk + 1) if self._next else chunk + 1
        if not self.prefetch or after >= len(self._chunks) or self._pending:
            return
        if after in self._cache:
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "sds-lazy-prefetch")
        self._pending[after] = self._pool.submit(self._rows_of, after, self._open_ahead)
        self.prefetches += 1
