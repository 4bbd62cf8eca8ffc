"""How :class:`~sdsnodes.IndexReader` applies the :class:`~sdsnodes.IndexOptions` that the index
layer has no words for: a cap on the index files, a cap on the rows, a key column."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from sdsnodes.index.filters import parse_filter
from sdsnodes.index.materialize import SourceFile, fingerprint, materialize, source_files
from sdsnodes.index.sources import IndexSourceError
from sdsnodes.options import IndexOptions
from sdsnodes.sample import KEY


def capped_files(
    url: str, storage_options: dict[str, Any] | None, options: IndexOptions
) -> list[SourceFile] | None:
    """The first ``options.max_index_files`` files of the source at ``url`` (a wildcard's
    matches sorted, a ``.txt`` of shards in its order), or None when there is no cap or the
    source has no more files than it.

    Raises:
        ValueError: a cap on a directory of media files (it has no index files to cap).
    """
    if options.max_index_files is None:
        return None
    files = source_files(url, storage_options, options.txt)
    if len(files) == 1 and files[0].info.get("type") == "directory":
        raise ValueError(
            f"IndexOptions(max_index_files={options.max_index_files}) caps the files of a "
            f"wildcard or of a .txt of index shards, and {url!r} is a directory of media files "
            "(one row per file): pass max_rows=... instead"
        )
    return files[: options.max_index_files] if len(files) > options.max_index_files else None


def materialize_files(
    files: list[SourceFile],
    storage_options: dict[str, Any] | None,
    options: IndexOptions,
    cache_dir: str | None,
) -> tuple[pa.Table, str]:
    """The index made of ``files`` only: each converted on its own (memory-mapped, shared with
    any other index that lists it), concatenated (columns unified, missing ones null), renamed
    and filtered as :func:`~sdsnodes.index.materialize.materialize` would.

    Returns:
        tuple[pyarrow.Table, str]: the table and a fingerprint of the files and options.
    """
    tables, keys = [], []
    for file in files:
        table, key = materialize(file.url, storage_options, cache_dir=cache_dir)
        tables.append(table)
        keys.append(key)
    table = renamed_and_filtered(pa.concat_tables(tables, promote_options="permissive"), options)
    rename = options.rename or {}
    blob = json.dumps(
        {"files": keys, "filter": None if options.filter is None else str(options.filter),
         "rename": rename}, sort_keys=True,
    )  # fmt: skip
    return table, hashlib.sha256(blob.encode()).hexdigest()[:24]


def renamed_and_filtered(table: pa.Table, options: IndexOptions) -> pa.Table:
    """``table`` with ``options.rename`` and then ``options.filter`` applied.

    Raises:
        IndexSourceError (ValueError): the rename names an absent column, or the filter does
            not fit the columns after it.
    """
    rename = options.rename or {}
    missing = set(rename) - set(table.column_names)
    if missing:
        raise IndexSourceError(
            f"rename names columns {sorted(missing)} absent from the index (it has "
            f"{table.column_names})"
        )
    table = table.rename_columns([rename.get(c, c) for c in table.column_names])
    if options.filter is None:
        return table
    try:
        return table.filter(parse_filter(options.filter))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise IndexSourceError(
            f"the filter does not fit the index (columns after rename: {table.column_names}): "
            f"{error}"
        ) from error


def shape(
    table: pa.Table, fingerprint: str, options: IndexOptions, src: str
) -> tuple[pa.Table, str]:
    """``table`` cut to ``options.max_rows`` rows and keyed by ``options.key_column`` (its
    values appended as ``__key__``: zero-copy, the column stays), and the fingerprint of what
    changed the rows.

    Raises:
        ValueError: ``key_column`` is not a column of the index, or the index has a
            ``__key__`` column already.
    """
    if options.max_rows is not None and table.num_rows > options.max_rows:
        table = table.slice(0, options.max_rows)
        fingerprint = f"{fingerprint}+rows{options.max_rows}"
    if options.key_column is not None:
        check_key_column(options.key_column, table.column_names, src)
        table = table.append_column(KEY, table.column(options.key_column))
    return table, fingerprint


def check_key_column(column: str, names: list[str], src: str) -> None:
    """Raise ValueError unless ``column`` is one of ``names`` and none is ``__key__``."""
    if column not in names:
        raise ValueError(
            f"IndexOptions: key_column={column!r} is not a column of the index {src!r}; its "
            f"columns are {names} (after rename). Pass key_column=<one of them>."
        )
    if KEY in names:
        raise ValueError(
            f"IndexOptions: key_column={column!r}, but the index {src!r} has a __key__ column "
            "already; drop key_column (or rename that column)"
        )


def lazy_rename(options: IndexOptions, names: list[str], src: str) -> dict[str, str]:
    """The renames of a lazy index: ``options.rename`` plus the key column's to ``__key__``
    (a lazy index reads each column once, so the key column is renamed, not copied)."""
    rename = dict(options.rename or {})
    if options.key_column is None:
        return rename
    check_key_column(options.key_column, [rename.get(n, n) for n in names], src)
    original = {new: old for old, new in rename.items()}.get(options.key_column, options.key_column)
    rename[original] = KEY
    return rename


def read_grouped(
    url: str, storage_options: dict[str, Any] | None, options: IndexOptions
) -> tuple[pa.Table, str]:
    """The directory at ``url`` read with ``options.group_by_key`` (one row per key, or per
    media file), renamed and filtered, in memory; and its fingerprint (the listing's, with the
    options).

    Raises:
        ValueError: ``url`` is not a directory (``group_by_key`` reads directories only), or the
            filter or rename does not fit its columns.
    """
    from sdsnodes.index.sources import read_index
    from sdsnodes.storage import filesystem

    fs, path = filesystem(url, storage_options)
    if not fs.isdir(path):
        raise ValueError(
            f"IndexOptions(group_by_key={options.group_by_key}) groups the files of a directory "
            f"by key, and {url!r} is not a directory: drop group_by_key"
        )
    table = read_index(url, storage_options, group_by_key=options.group_by_key)
    table = renamed_and_filtered(table, options)
    key = fingerprint(
        url, storage_options, group_by_key=options.group_by_key, rename=options.rename or {},
        filter=None if options.filter is None else str(options.filter),
    )  # fmt: skip
    if table.num_rows == 0:
        raise IndexSourceError(f"index {url!r} has no rows after the filter: nothing to stream")
    return table, key
