"""Samples made of several files that share a *key*: the split of a name into key and
extension, the flattening of ``.json`` sidecars, and the grouping of a listed directory by key.

The key rule is WebDataset's (``base_plus_ext``): a name's key is its path up to the first dot
of its base name, the rest is its extension (``"a.b/000123.seg.png"``: key ``"a.b/000123"``,
extension ``"seg.png"``; dots in directory names are part of the key). Tar shards
(:mod:`sdsnodes.index.tar`) and directories (:mod:`sdsnodes.index.sources`) both use it, so a
directory unpacked from a tar indexes to the same keys and columns.

A directory is grouped by key (one row per key, see :func:`group_files`) when grouping is asked
for, or — ``group_by_key=None``, the default — when at least one *sidecar* (a file that is not
media: ``.txt``, ``.json``, ``.pkl``…) shares its key with a media file. Why this rule: a
directory of media files only, or one with a stray ``README.txt``/``notes.json`` that belongs
to no sample, keeps its one-row-per-media-file index (nothing changes for existing users), while
SDS's layout (``000123.mp4`` beside ``000123.txt``/``000123.json``) is recognised without an
option. A key without a media file is then dropped, counted and logged (a caption with no video
cannot train); ``group_by_key=True`` keeps such keys too, for metadata-only directories
(captions and embeddings precomputed, no media at all).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

logger = logging.getLogger(__name__)

KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
INT_SIDECARS = ("cls", "cls2", "id", "index")
"""Extensions read as a small text holding an int (WebDataset's class labels)."""
SIDECAR_MAX_BYTES = 1 << 20
"""Sidecars (``.txt``, ``.json``, ``.cls``) larger than this are left as paths, not read."""
MEDIA_KINDS: dict[str, tuple[str, ...]] = {
    "video": ("mp4", "mkv", "mov", "webm", "avi", "m4v"),
    "image": ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"),
    "audio": ("wav", "flac", "mp3", "ogg", "m4a", "aac", "opus"),
    "latent": ("npy", "pt"),
}
"""Extensions (lower case) of media files, by the column they go to."""
DIRECTORY_COLUMNS = ("key", "path", "size", "caption", *MEDIA_KINDS)


def split_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member or file name (extension lower-cased), None without an
    extension."""
    match = KEY_EXT.match(name)
    return None if match is None else (match.group(1), match.group(2).lower())


def media_kind(ext: str) -> str | None:
    """The media column of an extension (its last dotted part decides), None for a sidecar."""
    last = ext.rsplit(".", 1)[-1]
    return next((k for k, exts in MEDIA_KINDS.items() if last in exts), None)


def flatten(fields: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``(name, value)`` of a JSON object's fields, nested objects joined with ``.``."""
    for name, value in fields.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def add_json_fields(row: dict[str, Any], fields: dict[str, Any], own: Iterable[str]) -> None:
    """Put a ``.json`` object's flattened fields into ``row``; a field named like one of the
    ``own`` columns, one already in the row, or one starting with ``__`` goes to
    ``json.<name>``."""
    own = set(own)
    for name, value in flatten(fields):
        taken = name in own or name.startswith("__") or name in row
        row[f"json.{name}" if taken else name] = value


def wants_grouping(files: list[tuple[str, int]], root: str) -> bool:
    """Whether some sidecar shares its key with a media file (the default rule)."""
    media, sidecars = set(), set()
    for name, _ in files:
        split = split_key(_relative(name, root))
        if split is not None:
            (media if media_kind(split[1]) else sidecars).add(split[0])
    return not media.isdisjoint(sidecars)


def _relative(name: str, root: str) -> str:
    return name[len(root) :] if name.startswith(root) else name


def group_files(
    files: list[tuple[str, int]],
    root: str,
    fs: Any,
    *,
    keep_without_media: bool = False,
    num_threads: int = 16,
    progress: bool = False,
    stats: dict[str, int] | None = None,
    max_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """One row per key of the listed ``files`` (URL, size), sorted by key.

    A row holds ``key`` (relative to ``root``), ``path`` and ``size`` (its first media file),
    one column per media file named by kind (``video``, ``image``, ``audio``, ``latent``; a
    second file of a kind, or one with a dotted extension such as ``seg.png``, is named by its
    extension), ``caption`` (the ``.txt``'s text), the ``.json``'s fields flattened (see
    :func:`add_json_fields`), ``<name>`` for a ``<name>.txt``, an int for ``.cls``/``.id``, and
    every other file's path under its extension (``pkl``, ``emb.pkl``…). Sidecars are read by
    ``num_threads`` threads (``progress``: a tqdm bar of files read, on stderr).

    Outcomes that leave a value as a path, each counted in ``stats`` and logged once: a sidecar
    over ``max_bytes`` (None: :data:`SIDECAR_MAX_BYTES`) (``too_large``), a ``.txt`` that is not UTF-8 (``not_utf8``: ``caption``
    None, the path under ``txt``), a ``.json`` that does not parse or is not an object
    (``json_not_object``: the path under ``json``). Keys without media are dropped
    (``without_media``) unless ``keep_without_media``.
    """
    max_bytes = SIDECAR_MAX_BYTES if max_bytes is None else max_bytes
    counts = {"too_large": 0, "not_utf8": 0, "json_not_object": 0, "without_media": 0}
    groups: dict[str, list[tuple[str, str, int]]] = {}
    for name, size in files:
        split = split_key(_relative(name, root))
        if split is not None:
            groups.setdefault(split[0], []).append((split[1], name, size))
    if not keep_without_media:
        orphans = [k for k, fl in groups.items() if not any(media_kind(e) for e, _, _ in fl)]
        for key in orphans:
            del groups[key]
        counts["without_media"] = len(orphans)
        if orphans:
            logger.warning("%d keys have no media file and are not indexed (first: %r)",
                           len(orphans), orphans[0])  # fmt: skip
    reads = [
        (name, size)
        for fl in groups.values()
        for ext, name, size in fl
        if _is_read(ext) and 0 <= size <= max_bytes
    ]
    texts = _read_all(fs, reads, num_threads, progress, root)
    rows = []
    for key in sorted(groups):
        row: dict[str, Any] = {"key": key}
        # plain extensions first, so "000123.mp4" takes "video" before "000123.a.mp4";
        # .json last, so its fields never take a file's column
        order = sorted(groups[key], key=lambda f: (f[0] == "json", "." in f[0], f[1]))
        for ext, name, size in order:
            _add_file(row, ext, name, size, texts.get(name), counts, max_bytes)
        rows.append(row)
    for reason, count in counts.items():
        if count and reason != "without_media":
            logger.warning("%d sidecar files %s: their values are left as paths", count,
                           _REASONS[reason])  # fmt: skip
    if stats is not None:
        stats.update(counts)
    return rows


_REASONS = {
    "too_large": f"are larger than {SIDECAR_MAX_BYTES} bytes",
    "not_utf8": "are not UTF-8 text (caption None, path under 'txt')",
    "json_not_object": "are not a JSON object (path under 'json')",
}


def _is_read(ext: str) -> bool:
    return ext in ("txt", "json") or ext.endswith(".txt") or ext.rsplit(".", 1)[-1] in INT_SIDECARS


def _read_all(
    fs: Any, reads: list[tuple[str, int]], num_threads: int, progress: bool, root: str
) -> dict[str, bytes]:
    """The bytes of every file in ``reads``, ``num_threads`` at a time (a remote directory's
    thousands of small captions cost one round trip each, so they must overlap)."""
    from sdsnodes.index.listing import Progress

    if not reads:
        return {}
    found = {}
    with (
        Progress(progress, root, "reading sidecars of", total=len(reads)) as bar,
        concurrent.futures.ThreadPoolExecutor(min(num_threads, len(reads))) as pool,
    ):
        futures = {pool.submit(fs.cat_file, name): name for name, _ in reads}
        for future in concurrent.futures.as_completed(futures):
            found[futures[future]] = future.result()
            bar.update(1)
    return found


def _add_file(
    row: dict[str, Any], ext: str, name: str, size: int, data: bytes | None,
    counts: dict[str, int], max_bytes: int,
) -> None:  # fmt: skip
    kind = media_kind(ext)
    if kind is not None:
        column = kind if kind not in row and "." not in ext else ext
        row[column] = name
        if "path" not in row:
            row.update(path=name, size=None if size < 0 else size)
        return
    if data is None:
        if _is_read(ext) and size > max_bytes:
            counts["too_large"] += 1
        row[ext] = name
        return
    if ext == "json":
        try:
            fields = json.loads(data or b"null")
        except ValueError:
            fields = None
        if isinstance(fields, dict):
            add_json_fields(row, fields, (*DIRECTORY_COLUMNS, "json"))
        else:
            counts["json_not_object"] += 1
            row["json"] = name
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        counts["not_utf8"] += 1
        row[ext] = name
        return
    if ext.rsplit(".", 1)[-1] in INT_SIDECARS:
        text = text.strip()
        row[ext] = int(text) if re.fullmatch(r"[+-]?\d+", text) else text
    else:
        row["caption" if ext == "txt" else ext[:-4]] = text


def rows_to_table(
    rows: list[dict[str, Any]],
    order: list[str] | None = None,
    int64: tuple[str, ...] = ("size",),
) -> pa.Table:
    """Rows as a table, columns in ``order`` (default: ``key``, ``path``, ``size``, the media
    kinds, ``caption``, then the others sorted by name); ``int64`` columns typed int64. A column
    whose values Arrow cannot hold in one type (mixed JSON types) is kept as text: strings as
    they are, other values as JSON. Shared by directory and tar indexes.
    """
    if order is None:
        names = list(dict.fromkeys(c for row in rows for c in row))
        first = [c for c in ("key", "path", "size", *MEDIA_KINDS, "caption") if c in names]
        order = first + sorted(c for c in names if c not in first)
    columns = {}
    for name in order:
        values = [row.get(name) for row in rows]
        if name in int64:
            columns[name] = pa.array(values, pa.int64())
            continue
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            columns[name] = pa.array(
                [v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
                pa.string(),
            )
    return pa.table(columns)
