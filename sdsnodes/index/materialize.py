"""Indexes of any size as memory-mapped Arrow files: converted once, streamed, cached.

Any index source (parquet, CSV, JSON/JSONL, a wildcard of them, a directory, a ``.txt`` list of
media files or of index shards, local or remote) is converted once into an uncompressed Arrow
IPC file in the index cache, record batch by record batch (memory bounded by a batch, a
progress bar for big ones), with the filter and column renames applied on the way. The file
is named by a fingerprint of the source (each file's path, size and mtime or ETag) and of the
options, so a changed source gets a new file — never a stale copy — and the fingerprint travels
in reader states so a resume notices. A directory holding an index published once for the
cluster (``sds index build SRC --out URL``, see :mod:`sdsnodes.index.published`) is downloaded
into the index cache instead, under the same lock and name.
Reading it back is a memory map: zero-copy, O(1) random access to any row, shared by forked
workers, and RSS grows only with the pages touched.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from sdsnodes.index.filters import parse_filter
from sdsnodes.index.published import check_options, fetch_published, read_manifest
from sdsnodes.index.sources import (
    IndexSourceError,
    check_txt_mode,
    read_index,
    txt_kind,
    txt_lines,
)
from sdsnodes.storage import default_cache_dir, filesystem

logger = logging.getLogger(__name__)
BATCH_ROWS = 65_536
STREAMED = (".parquet", ".csv")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One file (or the directory) an index source consists of."""

    fs: Any
    """its fsspec filesystem"""
    info: dict
    """its ``fs.info``: name, size, type, mtime or ETag"""
    url: str
    """how to name it to :func:`~sdsnodes.index.read_index` (with the protocol)"""


def source_files(
    url: str, storage_options: dict[str, Any] | None, txt: str | None = None
) -> list[SourceFile]:
    """The files the source consists of: the matches of a wildcard (sorted), the shards a
    ``.txt`` of index shards lists (in its order), else the one file or directory."""
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
    if len(infos) == 1 and infos[0].get("type") == "file" and path.lower().endswith(".txt"):
        shards = _txt_shards(url, fs, path, txt)
        if shards is not None:  # one request per shard (HEAD on S3): many at once
            with concurrent.futures.ThreadPoolExecutor(min(16, len(shards))) as pool:
                return list(pool.map(lambda s: _shard_file(url, s, storage_options), shards))
    return [SourceFile(fs, i, _url_of(url, fs, i)) for i in infos]


def _url_of(url: str, fs: Any, info: dict) -> str:
    if info.get("type") == "directory":
        return url
    return fs.unstrip_protocol(info["name"]) if "://" in url else info["name"]


def _txt_shards(url: str, fs: Any, path: str, txt: str | None) -> list[str] | None:
    """The index shards the ``.txt`` at ``url`` lists, or None when it lists media files."""
    if txt == "media":
        return None
    with fs.open(path, "rb") as f:
        lines = txt_lines(url, f.read())
    return lines if lines and txt_kind(url, lines, txt) == "index" else None


def _shard_file(url: str, shard: str, storage_options: dict[str, Any] | None) -> SourceFile:
    fs, path = filesystem(shard, storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise IndexSourceError(
            f"index shard {shard!r}, listed in {url!r}, does not exist"
        ) from None
    if info.get("type") != "file":
        raise IndexSourceError(f"index shard {shard!r}, listed in {url!r}, is not a regular file")
    return SourceFile(fs, info, shard)


def fingerprint(
    url: str, storage_options: dict[str, Any] | None = None, txt: str | None = None, **options: Any
) -> str:
    """A short hash of the source's files (path, size, mtime/ETag) and of ``options``; for a
    directory, of its listing (files added or removed anywhere below it change it); for a
    ``.txt`` of index shards, of the shards (``txt`` as in :func:`materialize`)."""
    return fingerprint_files(
        url, source_files(url, storage_options, txt), storage_options, **options
    )


def fingerprint_files(
    url: str, files: list[SourceFile], storage_options: dict[str, Any] | None = None, **options: Any
) -> str:
    """:func:`fingerprint` of the files :func:`source_files` found for ``url`` (no second
    listing)."""
    infos = [f.info for f in files]
    if len(infos) == 1 and infos[0].get("type") == "directory":
        from sdsnodes.index.listing import list_files

        infos = [
            {"name": name, "size": size}
            for name, size in list_files(url, storage_options, fs=files[0].fs)
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
    file: SourceFile, storage_options: dict[str, Any] | None, txt: str | None
) -> Iterator[pa.RecordBatch]:
    name = file.info["name"]
    ext = os.path.splitext(name)[1].lower()
    if file.info.get("type") == "directory" or ext not in STREAMED:
        yield from read_index(file.url, storage_options, txt).to_batches(BATCH_ROWS)
        return
    with file.fs.open(name, "rb") as f:
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


def index_cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where converted indexes live: ``cache_dir``, else ``<default cache>/index``."""
    return Path(cache_dir or Path(default_cache_dir()) / "index")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path), thread_local=False):  # fcntl, msvcrt or a lock file
        yield


def materialize(
    src: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    *,
    filter: str | pc.Expression | None = None,  # noqa: A002 - the field's word
    rename: dict[str, str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    txt: str | None = None,
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
        txt (str | None): what a ``.txt`` source lists: ``"index"`` (shards of the index, like
            SDS's ``split_file_paths.txt``: each shard is streamed in as a wildcard's files
            are), ``"media"`` (one sample per line), or None to decide by the lines'
            extensions (see :mod:`sdsnodes.index.sources`).

    A ``src`` that is a published index (a prefix with ``sdsnodes-index.json``) is fetched,
    not converted; its fingerprint is the one converting its source gave.

    Returns:
        tuple[pyarrow.Table, str]: the table (backed by the memory-mapped file) and the
        fingerprint of source + options.

    Raises:
        IndexSourceError (ValueError): the source is missing, unreadable, empty (after the
            filter), or its files have incompatible schemas, or a published index was built
            with another ``filter``/``rename``; the message names the fix.
        DownloadError: a published index could not be downloaded whole (see
            :func:`~sdsnodes.storage.fetch`).
    """
    url = os.fspath(src)
    check_txt_mode(txt)
    rename = dict(rename or {})
    filter_text = None if filter is None else str(filter)
    expression = None if filter is None else parse_filter(filter)
    files = source_files(url, storage_options, txt)
    published = read_manifest(url, files, storage_options)
    if published is not None:  # built once for the cluster: fetched, not converted
        check_options(published, url, filter_text, rename)
        key = published["fingerprint"]
    else:
        key = fingerprint_files(url, files, storage_options, filter=filter_text, rename=rename)
    root = index_cache_root(cache_dir)
    target = root / f"{key}.arrow"
    with _locked(root / f"{key}.lock"):
        if not target.exists() and published is not None:
            fetch_published(published, storage_options, target)
        elif not target.exists():
            _convert(url, storage_options, target, expression, rename, progress, txt, files)
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
    txt: str | None,
    files: list[SourceFile],
) -> None:
    from tqdm import tqdm

    if not files:
        raise IndexSourceError(f"index wildcard {url!r} matches no files")
    total = 0
    schemas = []
    streams: dict[
        int, Iterator[pa.RecordBatch]
    ] = {}  # files whose first batch was read for its schema
    try:
        for n, file in enumerate(files):
            if (
                os.path.splitext(file.info["name"])[1].lower() == ".parquet"
                and file.info.get("type") != "directory"
            ):
                with file.fs.open(file.info["name"], "rb") as f:
                    meta = pq.ParquetFile(f).metadata
                    schemas.append(meta.schema.to_arrow_schema())
                    total += meta.num_rows
                continue
            batches = _batches(file, storage_options, txt)
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
            for n, file in enumerate(files):
                for batch in streams.get(n) or _batches(file, storage_options, txt):
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
