"""Read an index from any source fsspec reaches into one ``pyarrow.Table``.

Sources: a parquet, CSV, JSON (array of objects) or JSONL file; a directory of media files (one
row per file); a wildcard of index files (schemas unified, missing columns null); a ``.txt`` file
of paths (blank lines and ``#`` comments skipped). Local paths and URLs alike.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from sdsnodes.index.listing import list_files
from sdsnodes.storage import filesystem

MEDIA_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "video": (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v"),
    "image": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"),
    "latent": (".npy", ".pt"),
}
logger = logging.getLogger(__name__)
INDEX_EXTENSIONS = (".parquet", ".csv", ".json", ".jsonl", ".txt")


class IndexSourceError(ValueError):
    """The index source is missing, unreadable or empty (a user mistake, named in the message)."""


_FIX = (
    "Pass a parquet/CSV/JSON/JSONL/.txt index file, a directory of media files, "
    "or a wildcard such as 'data/*.parquet'."
)


def _kind_of(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    for kind, exts in MEDIA_EXTENSIONS.items():
        if ext in exts:
            return kind
    return None


def _read_file(url: str, fs: Any, path: str) -> pa.Table:
    ext = os.path.splitext(path)[1].lower()
    with fs.open(path, "rb") as f:
        data = f.read()
    if ext == ".parquet":
        return pq.read_table(io.BytesIO(data))
    if ext == ".csv":
        return pa_csv.read_csv(io.BytesIO(data))
    if ext in (".json", ".jsonl"):
        head = data.lstrip()[:1]
        if head == b"[":
            return _from_rows(url, json.loads(data))
        return pa_json.read_json(io.BytesIO(data))
    if ext == ".txt":
        lines = [ln.strip() for ln in data.decode("utf-8").splitlines()]
        paths = [ln for ln in lines if ln and not ln.startswith("#")]
        base = url.rsplit("/", 1)[0] if "/" in url else ""
        paths = [
            p if ("://" in p or os.path.isabs(p) or not base) else f"{base}/{p}" for p in paths
        ]
        return _table_of_files(paths, sizes=None)
    raise IndexSourceError(f"index file {url!r} has an unknown extension {ext!r}. {_FIX}")


def _from_rows(url: str, rows: list[dict]) -> pa.Table:
    """A table from JSON objects; a column of mixed types (e.g. 1 and "a") is read as strings."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            logger.warning("index %s: column %r has mixed types; reading it as strings", url, name)
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(columns)


def _table_of_files(paths: list[str], sizes: list[int | None] | None) -> pa.Table:
    """One row per media file: ``path``, ``size`` and a column named by kind (video/image/…)."""
    kinds = [_kind_of(p) for p in paths]
    columns: dict[str, list] = {"path": paths, "size": sizes or [None] * len(paths)}
    for kind in MEDIA_EXTENSIONS:
        if kind in kinds:
            columns[kind] = [p if k == kind else None for p, k in zip(paths, kinds)]
    return (
        pa.table(columns, schema=None) if paths else pa.table({"path": pa.array([], pa.string())})
    )


def _read_directory(url: str, fs: Any, path: str) -> pa.Table:
    """One row per media file under the directory ``url``, listed in parallel (``list_files``:
    key ranges on S3/GCS, a threaded tree walk elsewhere), sorted by path."""
    exts = [e for kind_exts in MEDIA_EXTENSIONS.values() for e in kind_exts]
    files = [(n, size) for n, size in list_files(url, fs=fs, extensions=exts) if _kind_of(n)]
    return _table_of_files(
        [name for name, _ in files], [None if size < 0 else size for _, size in files]
    )


def read_index(src: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Read the index at ``src`` into one table.

    Args:
        src (str | os.PathLike): index file, directory, wildcard or ``.txt`` list (local or URL).
        storage_options (dict | None): fsspec options for remote sources.

    Returns:
        pyarrow.Table: one row per sample; columns as in the source(s), unified across files.

    Raises:
        IndexSourceError (a ValueError): the source does not exist, matches nothing, cannot be parsed, or has no rows;
            the message names the source and the fix.
    """
    url = os.fspath(src)
    fs, path = filesystem(url, storage_options)
    try:
        if any(ch in path for ch in "*?["):
            matches = sorted(fs.glob(path))
            if not matches:
                raise IndexSourceError(f"index wildcard {url!r} matches no files. {_FIX}")
            protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
            tables = [_read_file(protocol + m if protocol else m, fs, m) for m in matches]
            table = pa.concat_tables(tables, promote_options="permissive")
        elif fs.isdir(path):
            table = _read_directory(url, fs, path)
            if table.num_rows == 0:
                exts = sorted(e for exts in MEDIA_EXTENSIONS.values() for e in exts)
                raise IndexSourceError(
                    f"directory {url!r} holds no media files (looked for {exts})."
                )
        elif fs.exists(path):
            table = _read_file(url, fs, path)
        else:
            raise IndexSourceError(f"index {url!r} does not exist. {_FIX}")
    except IndexSourceError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse error becomes a user-facing ValueError
        raise IndexSourceError(
            f"cannot read index {url!r}: {type(error).__name__}: {error}. {_FIX}"
        ) from error
    if table.num_rows == 0:
        raise IndexSourceError(
            f"index {url!r} has no rows: nothing to stream. Check the source or its filter."
        )
    return table
