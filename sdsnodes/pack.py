"""``sds pack``: an index and its media bytes into parquet shards in the Hugging Face layout.

Each media column becomes a struct ``{bytes: binary, path: string}`` (what ``datasets`` writes
for ``Image()`` / ``Audio()`` / ``Video()``; ``path`` keeps the index's original value), every
other column is kept as it is, and the shards are named ``<prefix>-00000-of-00042.parquet``
with the ``huggingface`` schema metadata, so ``datasets.load_dataset("parquet", ...)`` reads them
and so does every sdsnodes preset (:mod:`sdsnodes.index.packed`,
:class:`~sdsnodes.nodes.shard_reader.ShardReader`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdsnodes.index.packed import (
    BYTES_FIELD,
    MEDIA_TYPE,
    find_media_columns,
    hf_metadata,
    media_kind,
)
from sdsnodes.index.sources import read_index
from sdsnodes.storage import filesystem, is_remote, local_path

logger = logging.getLogger(__name__)

MANIFEST = ".sds-pack.json"
"""The plan of a pack (shards and their rows), written in DST first: a rerun checks it."""
ROW_GROUP_BYTES = 8 << 20
"""The row-group size ``row_group_size=None`` aims for: 8 MiB, a ranged read's worth."""
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(size: int | str) -> int:
    """Bytes of ``size``: an int, or ``"256MB"`` / ``"1GiB"`` (MB = 10**6 as in ``datasets``).

    Raises:
        ValueError: not a positive size.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
        if m is None or m.group(2).upper() not in _UNITS:
            raise ValueError(f"{size=} must be bytes (an int) or like '256MB', '1GiB'")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < 1:
        raise ValueError(f"{size=} must be >= 1 byte")
    return value


@dataclasses.dataclass
class PackResult:
    """What :func:`pack` wrote."""

    shards: list[str]
    """every shard's URL, in order"""
    rows: int
    """rows packed"""
    written: int
    """shards written by this call (the others were complete already: a resumed pack)"""
    missing: int
    """media files that could not be read: packed with null ``bytes`` and their ``path``"""


def _sizes(
    table: pa.Table, media: list[str], storage_options: dict | None, threads: int
) -> list[int]:
    """Bytes per row: its media files' sizes (from a ``size`` / ``<column>_size`` column, else
    asked of the filesystem) plus the row's share of the other columns."""
    n, totals = table.num_rows, [0] * table.num_rows
    for column in media:
        known = f"{column}_size" if len(media) > 1 else "size"
        if known in table.column_names:
            sizes = table.column(known).to_pylist()
        else:
            sizes = [None] * n
        values = table.column(column).to_pylist()
        todo = [i for i in range(n) if not isinstance(sizes[i], int) and values[i] is not None]
        found = _map_files([values[i] for i in todo], _size_of, storage_options, threads)
        for i, size in zip(todo, found):
            sizes[i] = size if isinstance(size, int) else 0
        for i in range(n):
            totals[i] += int(sizes[i] or 0)
    rest = table.drop_columns(media).nbytes / max(n, 1)
    return [int(t + rest) for t in totals]


def plan_shards(
    sizes: Sequence[int], shard_size: int, num_shards: int | None = None
) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` row ranges: ``num_shards`` of them, else as few as keep each
    under ``shard_size`` bytes on average; cut where the running bytes cross multiples of
    ``total / num_shards``."""
    total, n = sum(sizes), len(sizes)
    num = num_shards if num_shards is not None else math.ceil(total / shard_size)
    num = min(n, max(1, num))
    bounds, running, k = [0], 0, 1
    for i, s in enumerate(sizes):
        running += s
        if k < num and running >= k * total / num and i + 1 < n:
            bounds.append(i + 1)
            k += 1
    bounds.append(n)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _size_of(fs: Any, path: str) -> int:
    return int(fs.size(path) or 0)


def _cat(fs: Any, path: str) -> bytes:
    return fs.cat_file(path)


def _map_files(
    values: Sequence[str | None], fn: Any, storage_options: dict | None, threads: int
) -> list[Any]:
    """``fn(fs, path)`` of each value (a local path or URL; None stays None), or the OSError it
    raised: local files one after the other (a thread costs more than a local read), remote ones
    as one ``fs.cat`` / ``fs.sizes`` batch on fsspec's event loop when they share an async
    filesystem, else ``threads`` at a time."""
    if not any(is_remote(v) for v in values if v is not None):
        local = _read_local if fn is _cat else _size_local
        return [None if v is None else _guarded(local, None, local_path(v)) for v in values]
    protocols = {v.split("://", 1)[0] for v in values if v is not None}
    fs, _ = filesystem(next(v for v in values if v is not None), storage_options)
    if len(protocols) == 1 and getattr(fs, "async_impl", False) and fn in (_cat, _size_of):
        paths = [filesystem(v, storage_options)[1] for v in values if v is not None]
        if fn is _cat:
            got = fs.cat(paths, on_error="return")
            results = iter(got[p] if isinstance(got, dict) else got for p in paths)
        else:
            results = iter(_guarded(_size_of, fs, p) for p in paths)  # sizes: HEAD each
        return [None if v is None else _error_as_os(next(results)) for v in values]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(
            pool.map(
                lambda v: None if v is None else _guarded(fn, *filesystem(v, storage_options)),
                values,
            )
        )


def _read_local(_: Any, path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _size_local(_: Any, path: str) -> int:
    return os.path.getsize(path)


def _guarded(fn: Any, fs: Any, path: str) -> Any:
    try:
        return fn(fs, path)
    except OSError as error:
        return error


def _error_as_os(value: Any) -> Any:
    if isinstance(value, BaseException) and not isinstance(value, OSError):
        return OSError(str(value))
    return value


def _complete(fs: Any, path: str, rows: int) -> bool:
    """Whether ``path`` is a readable parquet file of ``rows`` rows (a finished shard)."""
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows == rows
    except (OSError, pa.ArrowInvalid):
        return False


def pack(
    src: str | os.PathLike | pa.Table,
    dst: str | os.PathLike,
    *,
    shard_size: int | str = "256MB",
    num_shards: int | None = None,
    row_group_size: int | None = None,
    prefix: str = "train",
    media_columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
    num_threads: int = 32,
    progress: bool = True,
) -> PackResult:
    """Write the index ``src`` (every column) and its media bytes as parquet shards in ``dst``.

    Shards hold contiguous rows in index order (so ``__index__`` and ``__key__`` stay those of
    the raw files) and about ``shard_size`` bytes each; each is written to a temporary file
    and moved into place whole (a single upload on S3/GCS), after ``dst/.sds-pack.json`` (the
    plan). Interrupted, a rerun with the same arguments keeps the shards that are complete and
    writes the rest: no row is written twice. Remote media are read as one batch per row group
    on fsspec's event loop (S3, GCS, HTTP), else ``num_threads`` at a time; local ones in turn;
    media columns are stored uncompressed (JPEG, H.264 do not compress), other columns with
    zstd, without statistics on the bytes.

    Args:
        src (str | os.PathLike | pyarrow.Table): any index :func:`~sdsnodes.index.read_index`
            reads (parquet, CSV, JSON lines, a directory, tar shards), local or remote.
        dst (str | os.PathLike): the output directory, local or an fsspec URL (``s3://…``).
        shard_size (int | str): bytes per shard, e.g. ``"256MB"`` (10**6) or ``"1GiB"``.
        num_shards (int | None): write this many shards instead (as ``datasets``'s
            ``push_to_hub(num_shards=...)``), at most one per row; None: by ``shard_size``.
        row_group_size (int | None): rows per row group; None: about 8 MiB of rows
            (:data:`ROW_GROUP_BYTES`), the unit a ranged read or a reader's window fetches.
        prefix (str): the shards' name before ``-00000-of-00042.parquet`` (``datasets``'s
            split name).
        media_columns (Sequence[str] | None): the columns of media paths/URLs to embed; None:
            every string column whose first value has a media extension (image, video, audio,
            latent).
        storage_options (dict | None), dst_storage_options (dict | None): fsspec options for
            ``src`` and its media, and for ``dst``.
        num_threads (int): media files read at a time, >= 1.
        progress (bool): show a tqdm progress bar (rows).

    Returns:
        PackResult: the shards' URLs, rows, shards written now, unreadable media (packed with
        null ``bytes``: a reader falls back to their ``path``).

    Raises:
        ValueError: a bad argument, an index without media columns, a ``media_columns`` entry
            the index lacks, or a ``dst`` holding shards of another pack (another plan).
    """
    from tqdm import tqdm

    if num_threads < 1:
        raise ValueError(f"{num_threads=} must be >= 1")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"{num_shards=} must be None or >= 1")
    if row_group_size is not None and row_group_size < 1:
        raise ValueError(f"{row_group_size=} must be None or >= 1 (rows)")
    cap = parse_size(shard_size)
    table = src if isinstance(src, pa.Table) else read_index(src, storage_options)
    media = list(media_columns) if media_columns is not None else find_media_columns(table)
    missing_columns = [c for c in media if c not in table.column_names]
    if missing_columns or not media:
        raise ValueError(
            f"media_columns={media} must name columns of media paths/URLs of the index "
            f"{src!r} (its columns: {table.column_names}); pass media_columns=[...]"
        )
    sizes = _sizes(table, media, storage_options, num_threads)
    ranges = plan_shards(sizes, cap, num_shards)
    mean = sum(sizes) / max(len(sizes), 1)
    group = row_group_size or max(1, int(ROW_GROUP_BYTES // max(mean, 1)))
    fs, root = filesystem(os.fspath(dst), dst_storage_options)
    base = os.fspath(dst).rstrip("/")
    names = [f"{prefix}-{i:05d}-of-{len(ranges):05d}.parquet" for i in range(len(ranges))]
    plan = {"shards": names, "rows": [b - a for a, b in ranges], "row_group_size": group}
    plan["index"] = _digest(table, media)
    _check_plan(fs, root, plan)
    kinds = {
        c: media_kind(next(iter(table.column(c).drop_null().to_pylist()[:1]), "")) for c in media
    }
    schema = pa.schema(
        [pa.field(f.name, MEDIA_TYPE) if f.name in media else f for f in table.schema]
    ).with_metadata(hf_metadata(table.schema, kinds))
    written = missing = 0
    bar = tqdm(total=table.num_rows, unit="row", desc="packing", disable=not progress)
    with bar:
        for name, (start, stop) in zip(names, ranges):
            path = f"{root.rstrip('/')}/{name}"
            if _complete(fs, path, stop - start):
                bar.update(stop - start)
                continue
            missing += _write_shard(
                fs, path, table.slice(start, stop - start), schema, media, group, num_threads,
                storage_options, bar,
            )  # fmt: skip
            written += 1
    return PackResult([f"{base}/{n}" for n in names], table.num_rows, written, missing)


def _digest(table: pa.Table, media: list[str]) -> str:
    """A digest of the media paths/URLs, row by row: a rerun over another index is refused."""
    digest = hashlib.sha256()
    for column in media:
        for chunk in table.column(column).chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    digest.update(buffer)
    return digest.hexdigest()[:32]


def _check_plan(fs: Any, root: str, plan: dict) -> None:
    """Write the plan in ``root``, or check that the one there is the same (a resumed pack)."""
    manifest = f"{root.rstrip('/')}/{MANIFEST}"
    fs.makedirs(root, exist_ok=True)
    fs.invalidate_cache(root)
    if fs.exists(manifest):
        with fs.open(manifest, "rb") as f:
            old = json.loads(f.read())
        if old != plan:
            raise ValueError(
                f"{root!r} holds the shards of another pack ({len(old.get('shards', []))} "
                f"shards, {sum(old.get('rows', []))} rows; this one: {len(plan['shards'])} "
                f"shards, {sum(plan['rows'])} rows): pack into an empty directory, or rerun with "
                "the arguments of that pack to finish it"
            )
        return
    stray = [p for p in fs.glob(f"{root.rstrip('/')}/*.parquet")]
    if stray:
        raise ValueError(
            f"{root!r} holds parquet files ({stray[0]!r}, …) that no pack there planned: "
            "pack into an empty directory"
        )
    with fs.open(manifest, "wb") as f:
        f.write(json.dumps(plan).encode())


def _write_shard(
    fs: Any, path: str, rows: pa.Table, schema: pa.Schema, media: list[str], group: int,
    threads: int, storage_options: dict | None, bar: Any,
) -> int:  # fmt: skip
    """Write one shard (its media read by :func:`_map_files`) to a temporary file, then move it to
    ``path`` whole; returns the media files that could not be read."""
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    folder = os.path.dirname(path) if local else None
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    missing = 0
    compression = {f"{c}.{BYTES_FIELD}": "NONE" for c in media}
    stats = [f.name for f in schema if f.name not in media]
    try:
        with pq.ParquetWriter(
            tmp, schema, compression={**{f.name: "ZSTD" for f in schema}, **compression},
            write_statistics=stats or False, use_dictionary=stats or False,
        ) as writer:  # fmt: skip
            for start in range(0, rows.num_rows, group):
                chunk = rows.slice(start, group)
                arrays = []
                for field in schema:
                    column = chunk.column(field.name)
                    if field.name not in media:
                        arrays.append(column)
                        continue
                    values = column.to_pylist()
                    data = _map_files(values, _cat, storage_options, threads)
                    for v, d in zip(values, data):
                        if isinstance(d, OSError):
                            logger.warning("cannot read %r (packed without bytes): %s", v, d)
                    data = [d if isinstance(d, bytes) else None for d in data]
                    missing += sum(1 for v, d in zip(values, data) if v is not None and d is None)
                    arrays.append(
                        pa.StructArray.from_arrays(
                            [pa.array(data, pa.binary()), pa.array(values, pa.string())],
                            fields=list(MEDIA_TYPE),
                        )
                    )
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                bar.update(chunk.num_rows)
        if local:
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return missing
