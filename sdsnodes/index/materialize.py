"""Indexes of any size as memory-mapped Arrow files: converted once, streamed, cached.

Any index source (parquet, CSV, JSON/JSONL, a wildcard of them, a directory, a ``.txt`` list,
local or remote) is converted once into an uncompressed Arrow IPC file in the index cache,
record batch by record batch (memory bounded by a batch, a progress bar for big ones), with the
filter and column renames applied on the way. The file is named by a fingerprint of the source
(each file's path, size and mtime or ETag) and of the options, so a changed source gets a new
file — never a stale copy — and the fingerprint travels in reader states so a resume notices.
Reading it back is a memory map: zero-copy, O(1) random access to any row, shared by forked
workers, and RSS grows only with the pages touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from sdsnodes.index.filters import parse_filter
from sdsnodes.index.sources import IndexSourceError, read_index
from sdsnodes.storage import default_cache_dir, filesystem

logger = logging.getLogger(__name__)
BATCH_ROWS = 65_536
STREAMED = (".parquet", ".csv")


def _source_files(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, list[dict]]:
    """The filesystem and the ``info`` of each file the source consists of (sorted)."""
    fs, path = filesystem(url, storage_options)
    try:
        if any(ch in path for ch in "*?["):
            infos = [fs.info(p) for p in sorted(fs.glob(path))]
        elif fs.isdir(path):
            infos = [{"name": path, "type": "directory", "size": 0}]
        else:
            infos = [fs.info(path)]
    except FileNotFoundError:
        raise IndexSourceError(f"index {url!r} does not exist") from None
    special = [i["name"] for i in infos if i.get("type") == "other"]
    if special:  # a FIFO, socket or device: opening it could block forever
        raise IndexSourceError(
            f"index {url!r}: {special[0]!r} is not a regular file (a FIFO, socket or device); "
            "pass an index file or a directory"
        )
    return fs, infos


def fingerprint(url: str, storage_options: dict[str, Any] | None = None, **options: Any) -> str:
    """A short hash of the source's files (path, size, mtime/ETag) and of ``options``; for a
    directory, of its listing (files added or removed anywhere below it change it)."""
    fs, infos = _source_files(url, storage_options)
    if len(infos) == 1 and infos[0].get("type") == "directory":
        from sdsnodes.index.listing import list_files

        infos = [
            {"name": name, "size": size} for name, size in list_files(url, storage_options, fs=fs)
        ]
    parts = [
        (
            i["name"],
            i.get("size"),
            str(
                i.get("mtime")
                or i.get("LastModified")
                or i.get("ETag")
                or i.get("etag")
                or i.get("updated")
                or ""
            ),
        )
        for i in infos
    ]
    blob = json.dumps({"src": url, "files": parts, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _batches(
    url: str, fs: Any, info: dict, storage_options: dict[str, Any] | None
) -> Iterator[pa.RecordBatch]:
    name = info["name"]
    ext = os.path.splitext(name)[1].lower()
    if info.get("type") == "directory" or ext not in STREAMED:
        src = (
            url
            if info.get("type") == "directory"
            else (fs.unstrip_protocol(name) if "://" in url else name)
        )
        yield from read_index(src, storage_options).to_batches(BATCH_ROWS)
        return
    with fs.open(name, "rb") as f:
        if ext == ".parquet":
            yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS)
        else:
            yield from pa_csv.open_csv(f)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    table = pa.Table.from_batches([batch])
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def materialize(
    src: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    *,
    filter: str | pc.Expression | None = None,  # noqa: A002 - the field's word
    rename: dict[str, str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> tuple[pa.Table, str]:
    """The index at ``src`` as a memory-mapped table, converting it on first use.

    Args:
        src: index source (see :func:`~sdsnodes.index.read_index`).
        storage_options (dict | None): fsspec options for remote sources.
        filter (str | pyarrow.compute.Expression | None): keep rows matching it (column names
            after ``rename``); see :mod:`sdsnodes.index.filters`.
        rename (dict[str, str] | None): old column name → new one.
        cache_dir (str | None): where converted indexes live; default ``<cache>/index``.
        progress (bool | None): a progress bar while converting; None shows one past 1M rows.

    Returns:
        tuple[pyarrow.Table, str]: the table (backed by the memory-mapped file) and the
        fingerprint of source + options.

    Raises:
        IndexSourceError (ValueError): the source is missing, unreadable, empty (after the
            filter), or its files have incompatible schemas; the message names the fix.
    """
    url = os.fspath(src)
    rename = dict(rename or {})
    filter_text = None if filter is None else str(filter)
    expression = None if filter is None else parse_filter(filter)
    key = fingerprint(url, storage_options, filter=filter_text, rename=rename)
    root = Path(cache_dir or Path(default_cache_dir()) / "index")
    target = root / f"{key}.arrow"
    with _locked(root / f"{key}.lock"):
        if not target.exists():
            _convert(url, storage_options, target, expression, rename, progress)
    table = pa.ipc.open_file(pa.memory_map(str(target))).read_all()
    if table.num_rows == 0:
        raise IndexSourceError(
            f"index {url!r} has no rows{' after the filter' if filter else ''}: nothing to stream"
        )
    return table, key


def _convert(
    url: str,
    storage_options: dict[str, Any] | None,
    target: Path,
    expression: Any,
    rename: dict,
    progress: bool | None,
) -> None:
    from tqdm import tqdm

    fs, infos = _source_files(url, storage_options)
    if not infos:
        raise IndexSourceError(f"index wildcard {url!r} matches no files")
    total = 0
    schemas = []
    streams: dict[
        int, Iterator[pa.RecordBatch]
    ] = {}  # files whose first batch was read for its schema
    try:
        for n, info in enumerate(infos):
            if (
                os.path.splitext(info["name"])[1].lower() == ".parquet"
                and info.get("type") != "directory"
            ):
                with fs.open(info["name"], "rb") as f:
                    meta = pq.ParquetFile(f).metadata
                    schemas.append(meta.schema.to_arrow_schema())
                    total += meta.num_rows
                continue
            batches = _batches(url, fs, info, storage_options)
            first = next(batches, None)
            if first is not None:
                schemas.append(first.schema)
                streams[n] = itertools.chain([first], batches)
    except IndexSourceError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse error is the user's input
        raise IndexSourceError(
            f"cannot read index {url!r}: {type(error).__name__}: {error}"
        ) from error
    try:
        schema = (
            pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise IndexSourceError(
            f"the files of index {url!r} have incompatible columns: {error}"
        ) from error
    out_schema = pa.schema([f.with_name(rename.get(f.name, f.name)) for f in schema])
    missing = set(rename) - set(schema.names)
    if missing:
        raise IndexSourceError(
            f"rename names columns {sorted(missing)} absent from the index (it has {schema.names})"
        )
    if expression is not None:
        try:
            out_schema.empty_table().filter(expression)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            raise IndexSourceError(
                f"the filter does not fit index {url!r} (columns after rename: {out_schema.names}): {error}"
            ) from error
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    show = progress if progress is not None else total > 1_000_000
    rows = 0
    try:
        with (
            pa.OSFile(str(tmp), "wb") as sink,
            pa.ipc.new_file(sink, out_schema) as writer,
            tqdm(total=total or None, unit="row", desc="indexing", disable=not show) as bar,
        ):
            for n, info in enumerate(infos):
                for batch in streams.get(n) or _batches(url, fs, info, storage_options):
                    table = _conform(batch, schema).rename_columns(out_schema.names)
                    bar.update(table.num_rows)
                    if expression is not None:
                        table = table.filter(expression)
                    for b in table.to_batches(BATCH_ROWS):
                        writer.write_batch(b)
                        rows += b.num_rows
        os.replace(tmp, target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise IndexSourceError(f"cannot convert index {url!r}: {error}") from error
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("indexed %s: %d rows into %s", url, rows, target)
