"""Packed datasets: parquet shards in the Hugging Face ``datasets`` layout, media bytes inside.

A packed dataset is a set of parquet files (``train-00000-of-00042.parquet`` …) in which each
media column is a struct ``{bytes: binary, path: string}`` — what ``datasets`` writes for an
``Image()``, ``Audio()`` or ``Video()`` feature and what ``sds pack`` writes (see
:mod:`sdsnodes.pack`). This module finds the shards of such a dataset (a directory, a wildcard or
a list of files, local or remote), reads their footers, and describes each shard as one row of a
small *shard table*: the unit a :class:`~sdsnodes.nodes.shard_reader.ShardReader` streams.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdsnodes.index.sources import MEDIA_EXTENSIONS
from sdsnodes.storage import filesystem, is_remote

BYTES_FIELD, PATH_FIELD = "bytes", "path"
"""The fields of a media struct, as ``datasets`` names them."""

SHARD, SIZE, ETAG = "shard", "size", "etag"
NUM_ROWS, FIRST_ROW, ROW_GROUPS = "num_rows", "first_row", "row_groups"
"""The columns of a shard table: the shard's URL, its size in bytes and ETag (or mtime) when it
was listed, its rows, the global number of its first row and the rows of each of its row groups."""

_FOOTER_THREADS = 16
MEDIA_TYPE = pa.struct([(BYTES_FIELD, pa.binary()), (PATH_FIELD, pa.string())])
"""The type of a packed media column, as ``datasets`` stores an ``Image()`` or ``Audio()``."""
_FEATURE = {"image": "Image", "audio": "Audio", "video": "Video"}


def is_media_type(t: pa.DataType) -> bool:
    """Whether ``t`` is a media struct: fields ``bytes`` (binary) and ``path`` (string)."""
    if not pa.types.is_struct(t):
        return False
    names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    kind = names.get(BYTES_FIELD)
    return (
        kind is not None
        and (pa.types.is_binary(kind) or pa.types.is_large_binary(kind))
        and PATH_FIELD in names
    )


def media_columns(schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` that hold media structs, in schema order."""
    return [f.name for f in schema if is_media_type(f.type)]


def media_kind(value: str) -> str | None:
    """``"image"``, ``"video"``, ``"audio"``, ``"latent"`` by the extension, else None."""
    ext = os.path.splitext(value.split("?", 1)[0])[1].lower()
    return next((kind for kind, exts in MEDIA_EXTENSIONS.items() if ext in exts), None)


def find_media_columns(table: pa.Table) -> list[str]:
    """String columns whose first non-null value is a media file (by its extension)."""
    out = []
    for name in table.column_names:
        column = table.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        first = next((v for v in column.drop_null().to_pylist()[:1]), None)
        if isinstance(first, str) and media_kind(first) is not None:
            out.append(name)
    return out


def _feature(t: pa.DataType) -> Any:
    if pa.types.is_struct(t):
        return {t.field(i).name: _feature(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"feature": _feature(t.value_type), "_type": "Sequence"}
    name = {"bool": "bool", "double": "float64", "float": "float32", "halffloat": "float16"}
    return {"dtype": name.get(str(t), str(t)), "_type": "Value"}


def hf_metadata(schema: pa.Schema, kinds: dict[str, str | None]) -> dict[bytes, bytes]:
    """The ``huggingface`` schema metadata ``datasets`` writes: the features of every column
    (``Image()`` / ``Audio()`` / ``Video()`` for media columns of that kind)."""
    features = {}
    for field in schema:
        kind = kinds.get(field.name, "")
        if field.name in kinds and kind in _FEATURE:
            features[field.name] = {"_type": _FEATURE[kind]}
        else:
            features[field.name] = _feature(field.type)
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _expand(src: str, storage_options: dict[str, Any] | None) -> list[str]:
    """The parquet files of one source string: a wildcard's matches, a directory's ``*.parquet``
    (else ``*/*.parquet``, the ``data/`` folder of a Hub dataset), or the file itself."""
    fs, path = filesystem(src, storage_options)
    fs.invalidate_cache(path)  # a listing cached by this process may be stale
    protocol = src.split("://", 1)[0] + "://" if is_remote(src) else ""
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path))
    elif fs.isdir(path):
        found = sorted(fs.glob(path.rstrip("/") + "/*.parquet"))
        found = found or sorted(fs.glob(path.rstrip("/") + "/*/*.parquet"))
    elif path.lower().endswith(".parquet"):
        found = [path]
    else:
        return []
    return [protocol + p if protocol and "://" not in p else p for p in found]


def shard_urls(
    src: str | os.PathLike | Sequence[str | os.PathLike], storage_options: dict[str, Any] | None
) -> list[str]:
    """The parquet files ``src`` names (see :func:`_expand`), in order; [] when none."""
    items = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    urls: list[str] = []
    for item in items:
        urls.extend(_expand(os.fspath(item), storage_options))
    return [u for u in urls if u.lower().endswith(".parquet")]


def is_packed(
    src: Any,
    storage_options: dict[str, Any] | None = None,
    *,
    memo_dir: str | os.PathLike | None = None,
) -> bool:
    """Whether ``src`` is a packed dataset: parquet files whose first has a media struct column.

    A plain parquet index (URL or path columns) is not packed. Costs a listing and one footer;
    with ``memo_dir`` (the presets pass the index cache, ``<cache>/index``) the verdict is kept
    there, keyed by the first file's URL, size and ETag (or mtime), and a later call costs a
    listing and one ``info``: no footer read, and no parquet reader code paged into the
    process (1.5 MiB resident, measured with pyarrow 26).

    Raises:
        ValueError: the first parquet file of ``src`` is there but not readable parquet.
    """
    if isinstance(src, pa.Table) or src is None:
        return False
    if not isinstance(src, (str, os.PathLike)) and not (
        isinstance(src, Sequence) and all(isinstance(s, (str, os.PathLike)) for s in src)
    ):
        return False
    try:
        urls = shard_urls(src, storage_options)
    except (OSError, ValueError):
        return False  # not there, or not a path: the index readers say why
    if not urls:
        return False
    try:
        fs, path, info = _stat(urls[0], storage_options)
        memo = None if memo_dir is None else _verdict_path(memo_dir, urls[0], info)
        known = _read_verdict(memo)
        if known is not None:
            return known
        schema = _metadata(fs, path).schema.to_arrow_schema()
    except FileNotFoundError:
        return False  # the index readers say it does not exist
    except (OSError, pa.ArrowInvalid) as error:
        raise ValueError(
            f"{urls[0]!r} (of {src!r}) is not a readable parquet file ({error}); remove it or "
            "pass the other files"
        ) from error
    packed = bool(media_columns(schema))
    _write_verdict(memo, packed)
    return packed


def _verdict_path(memo_dir: str | os.PathLike, url: str, info: dict) -> Path:
    blob = json.dumps([url, info.get("size"), etag_of(info)], default=str)
    return Path(memo_dir) / f"packed-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"


def _read_verdict(memo: Path | None) -> bool | None:
    if memo is None:
        return None
    try:
        verdict = json.loads(memo.read_text())["packed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not there yet, or torn: read the footer
    return verdict if isinstance(verdict, bool) else None


def _write_verdict(memo: Path | None, packed: bool) -> None:
    if memo is None:
        return
    tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"packed": packed}))
        os.replace(tmp, memo)  # whole or absent, for processes that read it at once
    except OSError:  # a read-only cache: the next call reads the footer again
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _stat(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str, dict]:
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache(path)  # the size and ETag of now, not of an earlier listing
    return fs, path, fs.info(path)


def _metadata(fs: Any, path: str) -> pq.FileMetaData:
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata


def _footer(url: str, storage_options: dict[str, Any] | None) -> tuple[dict, pq.FileMetaData]:
    fs, path, info = _stat(url, storage_options)
    return info, _metadata(fs, path)


def etag_of(info: dict) -> str:
    """An object's version as its filesystem lists it: ETag, else generation, else mtime."""
    for key in ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "created"):
        value = info.get(key)
        if value is not None:
            return str(value).strip('"')
    return ""


def shard_table(
    src: str | os.PathLike | Sequence[str | os.PathLike],
    storage_options: dict[str, Any] | None = None,
) -> tuple[pa.Table, pa.Schema]:
    """One row per shard of the packed dataset ``src`` (see the module's constants), and the
    dataset's schema (the first shard's).

    Footers are read 16 at a time (one ranged read each on S3/GCS/HTTP).

    Raises:
        ValueError: ``src`` names no parquet file, a shard is not parquet, or shards disagree on
            their media columns (the message names the shard and the fix).
    """
    urls = shard_urls(src, storage_options)
    if not urls:
        raise ValueError(
            f"{src!r} names no .parquet file: pass a directory, wildcard or list of shards"
        )
    with concurrent.futures.ThreadPoolExecutor(min(_FOOTER_THREADS, len(urls))) as pool:
        futures = [pool.submit(_footer, u, storage_options) for u in urls]
        footers = []
        for url, future in zip(urls, futures):
            try:
                footers.append(future.result())
            except (pa.ArrowInvalid, OSError) as error:
                raise ValueError(
                    f"shard {url!r} of {src!r} is not a readable parquet file ({error}); "
                    "remove it from the dataset or pack again"
                ) from error
    schema = footers[0][1].schema.to_arrow_schema()
    media = media_columns(schema)
    rows, first = [], 0
    for url, (info, metadata) in zip(urls, footers):
        theirs = media_columns(metadata.schema.to_arrow_schema())
        if theirs != media:
            raise ValueError(
                f"shard {url!r} has media columns {theirs}, the first shard {urls[0]!r} has "
                f"{media}: pass shards of one dataset"
            )
        groups = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        rows.append(
            {SHARD: url, SIZE: int(info.get("size") or 0), ETAG: etag_of(info),
             NUM_ROWS: metadata.num_rows, FIRST_ROW: first, ROW_GROUPS: groups}
        )  # fmt: skip
        first += metadata.num_rows
    types = {SHARD: pa.string(), SIZE: pa.int64(), ETAG: pa.string(), NUM_ROWS: pa.int64()}
    types.update({FIRST_ROW: pa.int64(), ROW_GROUPS: pa.list_(pa.int64())})
    table = pa.Table.from_pylist(rows, schema=pa.schema(list(types.items())))
    return table, schema
