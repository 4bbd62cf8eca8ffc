"""ShardReader: the samples of packed parquet shards, a whole shard fetched at a time."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torchdata.nodes import BaseNode

from sdsnodes.errors import ErrorPolicy
from sdsnodes.index.packed import FIRST_ROW, NUM_ROWS, SHARD, SIZE
from sdsnodes.nodes._cache_ref import open_cache
from sdsnodes.nodes._packed_balance import Balance
from sdsnodes.nodes._packed_cursor import PartialShards
from sdsnodes.nodes._remote import RemoteErrors, remote_settings
from sdsnodes.nodes._shard_parts import (
    CorruptShard,
    Unit,
    cache_key,
    columns_of,
    plan_windows,
    read_path,
    unpin_done,
)
from sdsnodes.nodes.graph import NODE_KEY
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions
from sdsnodes.sample import EPOCH, INDEX, KEY, Sample
from sdsnodes.storage import fetch, is_remote

logger = logging.getLogger(__name__)
__all__ = ["CorruptShard", "ShardReader", "cache_key"]


class ShardReader(BaseNode[Sample], RemoteErrors):
    """Yield the samples of the shards its source yields (rows of a shard table, see
    :func:`sdsnodes.index.packed.shard_table`), each media struct replaced by its bytes.

    Remote shards are fetched whole into the budgeted, machine-wide cache (one pinned file per
    shard, keyed by URL, size and ETag; trimmed to its budget as each shard is released, so
    eviction is by whole shards), ``prefetch`` shards ahead in threads; local shards in place.
    Rows are read a window at a time: consecutive row groups of at least ``window`` rows,
    which are permuted with a generator seeded by ``(seed, epoch, first row of the shard,
    first row of the window)`` when ``shuffle`` (level 2; level 1, the shard order per epoch,
    is the source's Shuffler). In memory: at most ``window`` + one row group of rows. A null
    ``bytes`` is read from its ``path`` (absolute, a URL, or next to the shard) if readable.

    Args:
        source (BaseNode): yields shard rows (``shard``, ``size``, ``etag``, ``num_rows``,
            ``first_row``, ``row_groups``, ``__epoch__``): an IndexReader over the shard table,
            usually behind a Shuffler; it splits shards over ranks and workers.
        columns (Sequence[str]): the media columns (structs ``{bytes, path}``); each becomes the
            bytes (``bytes``) of the medium.
        window (int): rows permuted together within a shard, >= 1 (512).
        shuffle (bool): permute within windows (True) or keep the shard's row order.
        seed (int): seed of the within-window permutations.
        prefetch (int): shards fetched ahead of the one being read, >= 0 (2).
        cache (CacheOptions | None), fetch (FetchOptions | None): as for CachingDownloader.
        errors (ErrorOptions | None): ``on_error`` and ``max_error_rate``.
        balance (bool): when ``world_size > 1``, cap each epoch so that every rank reads as
            many rows (in whole batches of ``batch_size``) and DDP never waits on a short rank;
            the rows past the cap are not read (see :mod:`sdsnodes.nodes._packed_balance`).
        batch_size (int | None): the batch size downstream, for ``balance``; None: equal rows.

    Returns:
        Sample: the row's columns (media columns as ``bytes``), ``__key__`` (the row's
        ``__key__`` column, else its global row number), ``__index__`` (global row number:
        shards in listing order) and ``__epoch__``.

    State:
        ``{NODE_KEY: STATE_TAG, SOURCE_KEY: <source state before the shard being read>,
        FIRST_ROW_KEY, EPOCH_KEY: that shard's (None: none), OFFSET_KEY: int (its samples
        delivered), PARTIAL_KEY: <PartialShards state>, ERRORS_KEY: {...}, BALANCE_KEY:
        <Balance state>}``: O(1), plus after an elastic resume O(shards that were being read)
        until they are reopened. On resume the shard is fetched again (a cache hit) and its
        first ``offset`` samples of the same permutation are skipped unread (whole windows are
        not read at all); shards fetched ahead but not started are not in the state, so they
        are read. Elastic resume (another world size or ``num_workers``,
        :func:`sdsnodes.load_elastic_state`) is exactly-once too: finished shards are not read
        again, and each shard being read is resumed after its ``offset`` samples by whichever
        reader of the new layout gets it (the permutation
        depends on no layout; see :mod:`sdsnodes.nodes._packed_cursor`), in that epoch only.
        States saved without the tag resume such shards from their start (at-least-once).
        The two levels follow WebDataset's shard shuffle + sample buffer, with a seeded
        permutation in place of the buffer.

    Errors:
        a shard that cannot be fetched skips its samples as ``"missing"``/``"download"``; one
        that parquet cannot read (truncated, bad footer) as ``"corrupt_shard"``; a row group
        that cannot be read skips its rows as ``"corrupt_shard"``; a null ``bytes`` whose path
        is not readable as ``"missing"``. Under ``on_error="raise"`` they raise.

    Raises:
        ValueError: ``columns`` empty, ``window`` < 1, ``prefetch`` < 0 or ``batch_size`` < 1.
    """

    STATE_TAG = "ShardReader"
    """``state[NODE_KEY]``: how elastic resume finds the ShardReaders' states."""
    SOURCE_KEY = "source"
    FIRST_ROW_KEY = "first_row"  # the shard being read: its first global row, and its epoch
    EPOCH_KEY = "epoch"
    OFFSET_KEY = "offset"
    PARTIAL_KEY = "partial"  # shards to resume mid-way after an elastic resume
    ERRORS_KEY = "errors"
    BALANCE_KEY = "balance"  # equal batches per rank: rows delivered this epoch, cap, left

    def __init__(
        self,
        source: BaseNode,
        columns: Sequence[str],
        *,
        window: int = 512,
        shuffle: bool = True,
        seed: int = 0,
        prefetch: int = 2,
        cache: CacheOptions | None = None,
        fetch: FetchOptions | None = None,
        errors: ErrorOptions | None = None,
        balance: bool = True,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"{window=} must be >= 1 (rows shuffled together)")
        if prefetch < 0:
            raise ValueError(f"{prefetch=} must be >= 0 (shards fetched ahead)")
        self.columns, self.cache, self.fetch, self.cache_dir = remote_settings(
            columns, cache, fetch
        )
        self.source, self.window, self.shuffle, self.seed = source, window, shuffle, seed
        self.prefetch = prefetch
        errors = errors or ErrorOptions()
        self.errors = ErrorPolicy(errors.on_error, errors.max_error_rate)
        self._queue: collections.deque[Unit] = collections.deque()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._current: Unit | None = None
        self._rows: list[int] = []  # rows of the current window, in delivery order
        self._window_data: dict[str, list] = {}
        self._windows: list[tuple[list[int], int]] = []  # (row groups, first row) per window
        self._where: dict[int, int] = {}  # row of the shard → row of the window's data
        self._bad: dict[int, BaseException] = {}  # rows of unreadable row groups → the error
        self._file: pq.ParquetFile | None = None
        self._offset = 0  # samples of the current shard delivered (or to skip, on resume)
        self._resumed: tuple[Any, Any] = (None, None)  # (first row, epoch) of a resumed shard
        self._partial, self._next_partial = PartialShards(), PartialShards()
        self._exhausted = False
        self._balance = Balance(balance, batch_size)

    # -- torchdata node protocol ------------------------------------------------------------

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._drop()
        if initial_state is None:
            self.source.reset(None)
            self._offset, self._resumed = 0, (None, None)
            self._partial, self._next_partial = self._next_partial, PartialShards()
        else:
            self.errors.load(initial_state.get(self.ERRORS_KEY))
            self.source.reset(initial_state[self.SOURCE_KEY])
            self._offset = int(initial_state.get(self.OFFSET_KEY, 0))
            first, epoch = initial_state.get(self.FIRST_ROW_KEY), initial_state.get(self.EPOCH_KEY)
            self._resumed = (first, epoch)
            self._partial = PartialShards.load(initial_state.get(self.PARTIAL_KEY))
        self._exhausted = False
        saved = None if initial_state is None else initial_state.get(self.BALANCE_KEY, {})
        self._balance.start(self.source, self._partial, saved)

    def set_partial(self, partial: PartialShards) -> None:
        """Make the next ``reset()`` without state skip the first samples of the shards in
        ``partial`` (an elastic resume: :func:`sdsnodes.elastic.apply_cursor` calls this)."""
        self._next_partial = partial

    def next(self) -> Sample:
        while True:
            if self._balance.full():
                raise StopIteration  # the rest of the epoch is left to balance the ranks
            if self._rows:
                sample = self._sample(self._rows.pop())
                self._offset += 1
                self._balance.delivered += 1
                if sample is not None:
                    self.errors.ok()
                    return sample
                continue
            if self._current is not None and self._next_window():
                continue
            self._open_next()

    def get_state(self) -> dict[str, Any]:
        shard: tuple[Any, Any] = (None, None)
        if self._current is not None and (self._rows or self._windows):
            before, offset = self._current.before, self._offset
            shard = (self._current.unit[FIRST_ROW], self._current.unit[EPOCH])
        elif self._current is None and self._offset:  # a resumed shard not opened yet
            before, offset, shard = self.source.state_dict(), self._offset, self._resumed
        else:
            before = self._queue[0].before if self._queue else self.source.state_dict()
            offset = 0
        return {
            NODE_KEY: self.STATE_TAG, self.SOURCE_KEY: before, self.FIRST_ROW_KEY: shard[0],
            self.EPOCH_KEY: shard[1], self.OFFSET_KEY: offset,
            self.PARTIAL_KEY: self._partial.state(), self.ERRORS_KEY: self.errors.state(),
            self.BALANCE_KEY: self._balance.state(),
        }  # fmt: skip

    def shutdown(self) -> None:
        """Forget the shards in flight and stop the fetching threads."""
        self._drop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- shards -----------------------------------------------------------------------------

    def _fill(self, size: int) -> None:
        """Queue (and start fetching) shards until ``size`` are queued or the source ends."""
        while (
            not self._exhausted and len(self._queue) < size and self._balance.wants(self._ahead())
        ):
            before = self.source.state_dict()
            try:
                unit = next(self.source)
            except StopIteration:
                self._exhausted = True
                return
            self._queue.append(Unit(unit, before, self._threads().submit(self._local, unit)))

    def _ahead(self) -> int:
        """Rows queued or left in the current shard (a shard past the balance cap is not
        fetched)."""
        rows = sum(q.unit[NUM_ROWS] - self._partial.peek(q.unit) for q in self._queue)
        current = self._current.unit[NUM_ROWS] - self._offset if self._current else 0
        return rows + current

    def _local(self, unit: Sample) -> str:
        """The local path of the shard (fetched into the cache and pinned when remote)."""
        url = unit[SHARD]
        if not is_remote(url):
            return url
        download = functools.partial(
            fetch, url, expected_size=unit[SIZE] or None, **self.fetch.fetch_kwargs
        )
        return str(self._cache().get(cache_key(unit), download, size_hint=unit[SIZE] or None))

    def _open_next(self) -> None:
        """Make the next shard current (raises StopIteration after the last one)."""
        skip = self._offset if self._current is None else 0
        self._release_current()
        self._fill(1)
        if not self._queue:
            raise StopIteration
        head = self._queue.popleft()
        skip = skip or self._partial.take(head.unit)  # elastic resume: its first samples read
        self._current, self._offset, self._resumed = head, 0, (None, None)
        self._fill(self.prefetch)  # the next shards download while this one is read
        unit = head.unit
        try:
            path = head.future.result()
            if is_remote(unit[SHARD]):
                head.pinned = cache_key(unit)
            self._file = pq.ParquetFile(path, memory_map=True)
            if self._file.metadata.num_rows != unit[NUM_ROWS]:
                raise CorruptShard(
                    f"shard {unit[SHARD]!r} has {self._file.metadata.num_rows} rows, the shard "
                    f"table {unit[NUM_ROWS]}: it changed since it was listed"
                )
        except Exception as error:  # noqa: BLE001 - counted, or raised under on_error="raise"
            self._release_current()
            self._skip_rows(unit, unit[NUM_ROWS] - skip, error, self._reason(error))
            return
        self._windows, self._sizes = plan_windows(self._file.metadata, self.window)
        self._offset = skip
        while self._windows and skip >= self._count(self._windows[0]):
            skip -= self._count(self._windows.pop(0))
        self._next_window(skip)

    def _count(self, window: tuple[list[int], int]) -> int:
        return sum(self._sizes[g] for g in window[0])

    def _reason(self, error: BaseException) -> str:
        if isinstance(error, (CorruptShard, pa.ArrowException)):
            return CorruptShard.reason
        return self.classify(error)

    def _window_rows(self, window: tuple[list[int], int]) -> list[int]:
        """The rows of ``window`` (numbers within the shard) in delivery order, reversed (popped
        from the end)."""
        first = window[1]
        rows = np.arange(first, first + self._count(window))
        if self.shuffle:
            unit = self._current.unit  # type: ignore[union-attr]
            rng = np.random.default_rng([self.seed, unit[EPOCH], unit[FIRST_ROW], first])
            rows = rng.permutation(rows)
        return rows[::-1].tolist()

    def _next_window(self, skip: int = 0) -> bool:
        """Read the next window of the current shard (skipping its first ``skip`` samples);
        False when the shard is done. A row group that cannot be read leaves its rows to be
        skipped (counted as ``"corrupt_shard"`` when their turn comes)."""
        if not self._windows:
            return False
        groups, first = self._windows.pop(0)
        rows = self._window_rows((groups, first))
        if skip:
            rows = rows[: len(rows) - skip]
        tables, self._where, self._bad = [], {}, {}
        start, at = first, 0
        for g in groups:
            n = self._sizes[g]
            try:
                tables.append(self._file.read_row_group(g))  # type: ignore[union-attr]
                self._where.update({start + i: at + i for i in range(n)})
                at += n
            except Exception as error:  # noqa: BLE001 - its rows are skipped
                self._bad.update(dict.fromkeys(range(start, start + n), error))
            start += n
        self._window_data = columns_of(pa.concat_tables(tables), self.columns) if tables else {}
        self._rows = rows
        return True

    def _sample(self, row: int) -> Sample | None:
        """Row ``row`` of the current shard as a sample; None when it was skipped."""
        unit = self._current.unit  # type: ignore[union-attr]
        if row in self._bad:
            error = self._bad[row]
            self.errors.skip(CorruptShard.reason, error, f"row {row} of shard {unit[SHARD]!r}")
            return None
        i = self._where[row]
        number = unit[FIRST_ROW] + row
        out: Sample = {}
        for name, values in self._window_data.items():
            if "\0" not in name:
                out[name] = values[i]
        out[KEY] = str(out[KEY]) if out.get(KEY) is not None else str(number)
        out[INDEX], out[EPOCH] = number, unit[EPOCH]
        for column in self.columns:
            if out.get(column) is None:
                path = self._window_data[f"{column}\0path"][i]
                try:
                    out[column] = read_path(unit[SHARD], path, self.fetch.storage_options)
                except Exception as error:  # noqa: BLE001 - counted, or raised
                    self.errors.skip(
                        self.classify(error), error, f"{out[KEY]} ({column}: {path!r})"
                    )
                    return None
        return out

    def _skip_rows(self, unit: Sample, count: int, error: BaseException, reason: str) -> None:
        logger.warning("skipping %d samples of shard %r: %s", count, unit[SHARD], error)
        self._balance.delivered += count  # skipped rows count towards the cap, as read ones
        for _ in range(count):
            self.errors.skip(reason, error, f"shard {unit[SHARD]!r}")

    # -- housekeeping -----------------------------------------------------------------------

    def _cache(self) -> Any:
        return open_cache(
            self.cache_dir, self.cache.max_bytes, self.cache.ttl, self.cache.policy.value
        )

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max(1, self.prefetch), thread_name_prefix="sds-shard"
            )
        return self._executor

    def _release_current(self) -> None:
        current, self._current = self._current, None
        self._rows, self._windows, self._window_data, self._file = [], [], {}, None
        if current is not None and current.pinned is not None:
            cache = self._cache()
            cache.unpin(current.pinned)
            cache.trim()  # a whole shard released: back within the budget at once

    def _drop(self) -> None:
        """Forget the current shard and the queue, unpinning what they hold."""
        self._release_current()
        queue, self._queue = self._queue, collections.deque()
        for pending in queue:
            pending.future.cancel()  # not started yet: never fetched
            if is_remote(pending.unit[SHARD]):
                pending.future.add_done_callback(
                    functools.partial(unpin_done, self._cache(), cache_key(pending.unit))
                )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_queue"], state["_executor"], state["_current"] = collections.deque(), None, None
        state["_file"], state["_window_data"], state["_rows"] = None, {}, []
        return state
