"""Read an index from any source fsspec reaches into one ``pyarrow.Table``.

Sources: a parquet, CSV, JSON (array of objects) or JSONL file; a directory of media files (one
row per file, or one row per key when sidecar files sit beside them: ``000123.mp4`` with
``000123.txt``/``000123.json``, see :mod:`sdsnodes.index._sidecars` for the rule); a wildcard of index files (schemas unified, missing columns null); a ``.txt`` file
of paths (blank lines and ``#`` comments skipped). Local paths and URLs alike.

A ``.txt`` is one of two things (``txt=``): a list of media files, one row per line, or — as
SDS's ``split_file_paths.txt`` — a list of index files, the shards of one index (read as a
wildcard of them would be). By default the lines tell: when every line is an index file
(``.parquet``, ``.csv``, ``.json``, ``.jsonl``) it lists shards, when none is it lists media, and
a mix is refused (pass ``txt=`` to say which). Relative lines resolve against the ``.txt``'s own
directory; any line may be a URL (``s3://…``).
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

from sdsnodes.index._sidecars import group_files, rows_to_table, wants_grouping
from sdsnodes.index.listing import current_defaults, list_files
from sdsnodes.storage import filesystem, protocol_of

MEDIA_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "video": (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v"),
    "image": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"),
    "latent": (".npy", ".pt"),
}
logger = logging.getLogger(__name__)
INDEX_EXTENSIONS = (".parquet", ".csv", ".json", ".jsonl", ".txt")
#: what a ``.txt`` of index shards may list (not ``.txt``: lists do not nest)
SHARD_EXTENSIONS = (".parquet", ".csv", ".json", ".jsonl")
TXT_MODES = ("index", "media")


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


def _read_file(
    url: str,
    fs: Any,
    path: str,
    storage_options: dict[str, Any] | None = None,
    txt: str | None = None,
) -> pa.Table:
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
        paths = txt_lines(url, data)
        if txt_kind(url, paths, txt) == "index":
            return _read_shards(url, paths, storage_options)
        return _table_of_files(paths, sizes=None)
    raise IndexSourceError(f"index file {url!r} has an unknown extension {ext!r}. {_FIX}")


def _read_shards(url: str, shards: list[str], storage_options: dict[str, Any] | None) -> pa.Table:
    """The index files ``shards`` listed by the ``.txt`` at ``url`` as one table (columns
    unified as for a wildcard)."""
    tables = []
    for shard in shards:
        fs, path = filesystem(shard, storage_options)
        if not fs.exists(path):
            raise IndexSourceError(f"index shard {shard!r}, listed in {url!r}, does not exist")
        tables.append(_read_file(shard, fs, path, storage_options))
    return pa.concat_tables(tables, promote_options="permissive")


def txt_lines(url: str, data: bytes) -> list[str]:
    """The paths a ``.txt`` list holds (blank lines and ``#`` comments skipped), relative ones
    resolved against the directory of ``url``."""
    lines = [ln.strip() for ln in data.decode("utf-8").splitlines()]
    paths = [ln for ln in lines if ln and not ln.startswith("#")]
    base = url.rsplit("/", 1)[0] if "/" in url else ""
    return [p if ("://" in p or os.path.isabs(p) or not base) else f"{base}/{p}" for p in paths]


def _is_shard(path: str) -> bool:
    if "://" in path:  # a URL's query or fragment is not part of its extension
        path = path.split("?", 1)[0].split("#", 1)[0]
    return os.path.splitext(path)[1].lower() in SHARD_EXTENSIONS


def check_txt_mode(txt: str | None) -> None:
    """Raise ValueError unless ``txt`` is None, ``"index"`` or ``"media"``."""
    if txt is not None and txt not in TXT_MODES:
        raise ValueError(
            f"{txt=} must be 'index' (a .txt of index shards), 'media' (a .txt of media "
            "files) or None (decide by the lines' extensions)"
        )


def txt_kind(url: str, paths: list[str], txt: str | None = None) -> str:
    """What the ``.txt`` at ``url`` with lines ``paths`` lists: ``"index"`` (shards of an index)
    or ``"media"`` (one sample per line).

    Args:
        url (str): the ``.txt`` (named in errors).
        paths (list[str]): its lines (see :func:`txt_lines`).
        txt (str | None): ``"index"`` or ``"media"`` to say; None decides by the extensions:
            ``"index"`` when every line is a ``.parquet``/``.csv``/``.json``/``.jsonl`` file.

    Raises:
        IndexSourceError (ValueError): ``txt="index"`` with a line that is not an index file,
            or ``txt=None`` with a mix of index files and other files.
    """
    check_txt_mode(txt)
    shards = [p for p in paths if _is_shard(p)]
    others = [p for p in paths if not _is_shard(p)]
    if txt == "media" or not shards:
        return "media"
    if not others:
        return "index"
    if txt == "index":
        raise IndexSourceError(
            f"{url!r} is read as a list of index shards (txt='index'), but line {others[0]!r} "
            f"is not an index file {SHARD_EXTENSIONS}"
        )
    raise IndexSourceError(
        f"{url!r} mixes index files ({shards[0]!r}) and other files ({others[0]!r}): pass "
        "txt='index' to read its lines as shards of one index, or txt='media' for one sample "
        "per line"
    )


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


def _read_directory(
    url: str, fs: Any, path: str, group_by_key: bool | None, stats: dict[str, int] | None
) -> pa.Table:
    """The rows of the directory ``url``, listed in parallel (``list_files``: key ranges on
    S3/GCS, a threaded tree walk elsewhere): one per media file, sorted by path, or one per key
    (``group_by_key``, see :mod:`sdsnodes.index._sidecars`), sidecars read in parallel."""
    exts = [e for kind_exts in MEDIA_EXTENSIONS.values() for e in kind_exts]
    listed = list_files(url, fs=fs, extensions=None if group_by_key is not False else exts)
    root = (fs.unstrip_protocol(path) if protocol_of(url) else path).rstrip("/") + "/"
    if group_by_key or (group_by_key is None and wants_grouping(listed, root)):
        num_threads, progress = current_defaults()
        rows = group_files(
            listed, root, fs, keep_without_media=bool(group_by_key), num_threads=num_threads,
            progress=progress, stats=stats,
        )  # fmt: skip
        return rows_to_table(rows) if rows else pa.table({"path": pa.array([], pa.string())})
    files = [(n, size) for n, size in listed if _kind_of(n)]
    return _table_of_files(
        [name for name, _ in files], [None if size < 0 else size for _, size in files]
    )


def read_index(
    src: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    txt: str | None = None,
    *,
    group_by_key: bool | None = None,
    stats: dict[str, int] | None = None,
) -> pa.Table:
    """Read the index at ``src`` into one table.

    Args:
        src (str | os.PathLike): index file, directory, wildcard or ``.txt`` list (local or URL).
        storage_options (dict | None): fsspec options for remote sources (and the shards of a
            ``.txt`` of index shards).
        txt (str | None): what a ``.txt`` lists: ``"index"`` (shards of the index, like SDS's
            ``split_file_paths.txt``), ``"media"`` (one sample per line), or None to decide by
            the lines' extensions (see the module's docstring). Other sources ignore it.
        group_by_key (bool | None): how a directory is read: None (default) groups its files
            by key (one row per key: media columns, ``caption`` from the ``.txt``, the
            ``.json``'s fields, other files as paths) when some sidecar file shares its key
            with a media file, else one row per media file; True always groups and keeps keys
            without media (metadata-only directories); False never groups. Other sources
            ignore it. See :mod:`sdsnodes.index._sidecars`.
        stats (dict | None): for a grouped directory, filled with the counts of sidecars left
            as paths (``too_large``, ``not_utf8``, ``json_not_object``) and of keys dropped
            for having no media (``without_media``).

    Returns:
        pyarrow.Table: one row per sample; columns as in the source(s), unified across files.

    Raises:
        IndexSourceError (a ValueError): the source does not exist, matches nothing, cannot be parsed, or has no rows;
            the message names the source and the fix.
    """
    url = os.fspath(src)
    check_txt_mode(txt)
    from sdsnodes.index.tar import is_tar_source, tar_index  # tar.py imports this module

    if is_tar_source(url, storage_options):  # WebDataset shards, indexed in place
        return tar_index(url, storage_options)
    fs, path = filesystem(url, storage_options)
    try:
        if any(ch in path for ch in "*?["):
            matches = sorted(fs.glob(path))
            if not matches:
                raise IndexSourceError(f"index wildcard {url!r} matches no files. {_FIX}")
            protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
            tables = [
                _read_file(protocol + m if protocol else m, fs, m, storage_options, txt)
                for m in matches
            ]
            table = pa.concat_tables(tables, promote_options="permissive")
        elif fs.isdir(path):
            table = _read_directory(url, fs, path, group_by_key, stats)
            if table.num_rows == 0:
                exts = sorted(e for exts in MEDIA_EXTENSIONS.values() for e in exts)
                raise IndexSourceError(
                    f"directory {url!r} holds no media files (looked for {exts})."
                )
        elif fs.exists(path):
            table = _read_file(url, fs, path, storage_options, txt)
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
