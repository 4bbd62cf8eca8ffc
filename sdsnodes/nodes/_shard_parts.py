"""The parts of a ShardReader that hold no state: shard identity, columns, null-bytes paths."""

from __future__ import annotations

import concurrent.futures
import os
import posixpath
import urllib.parse
from collections.abc import Collection
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdsnodes.index.packed import BYTES_FIELD, ETAG, PATH_FIELD, SHARD, SIZE
from sdsnodes.sample import Sample
from sdsnodes.storage import filesystem, is_remote


class CorruptShard(ValueError):
    """A shard (or a row group of it) that parquet cannot read (``reason``: the skip's)."""

    reason = "corrupt_shard"


def cache_key(unit: Sample) -> str:
    """The cache's key of a shard's version: its URL plus the size and ETag it was listed with,
    so a shard rewritten remotely is a new file, never mixed with the cached old one."""
    version = urllib.parse.quote(f"{unit[ETAG]}-{unit[SIZE]}", safe="")
    return f"{unit[SHARD]}?sds-version={version}"


class Unit:
    """A shard on its way: the source's state before it, and its fetch (a local path)."""

    def __init__(self, unit: Sample, before: dict, future: concurrent.futures.Future) -> None:
        self.unit, self.before, self.future = unit, before, future
        self.pinned: str | None = None  # the cache key this node pins


def columns_of(table: pa.Table, media: Collection[str]) -> dict[str, list]:
    """The columns of a window's rows as lists; a media column (``{bytes, path}`` structs, or
    None for a null struct) becomes its bytes under its name and its paths under
    ``name + "\\0path"``."""
    out = {}
    for name in table.column_names:
        column = table.column(name)
        if name in media:
            values = [v or {} for v in column.to_pylist()]
            out[name] = [v.get(BYTES_FIELD) for v in values]
            out[f"{name}\0path"] = [v.get(PATH_FIELD) for v in values]
        else:
            out[name] = column.to_pylist()
    return out


def read_path(shard: str, path: str | None, storage_options: dict | None) -> bytes:
    """The bytes at a media struct's ``path``: absolute, a URL, or next to the shard.

    Raises:
        FileNotFoundError: no path, or nothing there; fsspec's errors for a remote path.
    """
    if not path:
        raise FileNotFoundError("the media struct has neither bytes nor path")
    if not is_remote(path) and not os.path.isabs(path):
        path = posixpath.join(posixpath.dirname(shard), path)
    fs, p = filesystem(path, storage_options)
    return fs.cat_file(p)


def unpin_done(cache: Any, key: str, future: concurrent.futures.Future) -> None:
    if not future.cancelled() and future.exception() is None:
        cache.unpin(key)


def plan_windows(
    metadata: pq.FileMetaData, window: int
) -> tuple[list[tuple[list[int], int]], list[int]]:
    """The windows of a shard (consecutive row groups of >= ``window`` rows in all, each with
    its first row) and the rows of each row group."""
    windows, groups, rows, first = [], [], 0, 0
    for g in range(metadata.num_row_groups):
        groups.append(g)
        rows += metadata.row_group(g).num_rows
        if rows >= window:
            windows.append((groups, first))
            first += rows
            groups, rows = [], 0
    if groups:
        windows.append((groups, first))
    return windows, [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
