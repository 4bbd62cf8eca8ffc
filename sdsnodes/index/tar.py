"""Index tar shards in place (WebDataset layout): one row per sample, its members addressed by
byte range, nothing rewritten.

A WebDataset tar groups members by *key*, the member's path up to the first dot of its base
name (``"a/000123.jpg"`` and ``"a/000123.json"`` are the sample ``"a/000123"``, extensions
``jpg`` and ``json``: WebDataset's own rule, so keys agree with it). :func:`tar_index` reads
only the tar headers (512-byte blocks; GNU long names and PAX headers through :mod:`tarfile`)
and, in the same pass, the small sidecar members, and returns a table with one row per key:

- ``key`` (the sample's key), ``url`` (the tar), ``member`` (the first media member's name),
  ``offset`` (where its bytes start in the tar) and ``size`` (its bytes);
- one column per media member, named by its kind as ``sds index build`` names files
  (``image``, ``video``, ``audio``, ``latent``; another extension keeps its own name, e.g.
  ``seg.png``), holding the member's *address*: ``<tar url>#offset=<first byte>&size=<bytes>``;
- ``caption``: the ``.txt`` member's text; ``cls`` (and other ``*.cls``/``*.id``): an int when
  it parses; the ``.json`` member's fields flattened into columns (nested objects joined with
  ``.``: ``exif.Make``; a field named like one of the columns above, or starting with ``__``,
  becomes ``json.<name>``).

Why an address in one string column, not only ``url``/``offset``/``size`` columns: the column
a preset decodes (``image``) then says by itself where its bytes are, so a sample with several
members (an image and a mask, a video and its audio) addresses each one, filters and renames
carry it like any column, and a node recognises it by value: :func:`parse_member` matches only
a trailing ``#offset=N&size=M`` (an object key holding ``#`` elsewhere is untouched, and fsspec
never sees the fragment). The string is also the member's cache key, so the cache names, pins
and evicts members as it does files. fsspec's own ``tar://member::https://…`` chaining was the
alternative; it lists the whole tar (every header, one request each over HTTP) on each open.
``url``/``offset``/``size`` repeat the first media member for tools that want plain columns
(``size`` is also the download budget's size hint).

How the headers are read: a local tar is read by :mod:`tarfile`, which seeks over member
bodies, so only headers and sidecars are read. A remote tar is read through a buffered file of
ranged GETs whose read-ahead follows the members' stride: members smaller than a quarter of
``_ranged_tar.READ_AHEAD`` (4 MiB) are read through in 4 MiB requests (the bodies travel, but one request
covers many headers: cheaper than a request per member when a request costs more than moving
its members' bytes); larger members are skipped, each header costing one ``HEADER_READ``
(16 KiB) request that also holds the sidecars following it. The first GET reads a header
(the stride is not known yet); a tar no larger than ``READ_AHEAD`` is one request. ``benchmarks/bench_tar.py`` measures both on image and
video-sized members (``benchmarks/README.md``, "tar").
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import tarfile
from typing import Any

import pyarrow as pa

from sdsnodes.index._ranged_tar import RangedTar
from sdsnodes.index._sidecars import (
    INT_SIDECARS,
    MEDIA_KINDS,
    SIDECAR_MAX_BYTES,
    add_json_fields,
    media_kind,
    rows_to_table,
    split_key,
)
from sdsnodes.storage import filesystem, is_remote, local_path

logger = logging.getLogger(__name__)

OWN_COLUMNS = ("key", "url", "member", "offset", "size", "caption", *MEDIA_KINDS)
_MEMBER = re.compile(r"#offset=(\d+)&size=(\d+)$")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def member_address(url: str, offset: int, size: int) -> str:
    """The address of bytes ``[offset, offset + size)`` of the tar ``url``:
    ``"<url>#offset=<offset>&size=<size>"``."""
    return f"{url}#offset={int(offset)}&size={int(size)}"


def parse_member(value: Any) -> tuple[str, int, int] | None:
    """``(tar url, offset, size)`` of a member address, None for anything else."""
    if not isinstance(value, str):
        return None
    match = _MEMBER.search(value)
    if match is None:
        return None
    return value[: match.start()], int(match.group(1)), int(match.group(2))


def is_tar_source(src: Any, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``src`` names tar shards: a ``.tar`` path or URL, a wildcard or brace range of
    them, or a ``.txt`` list whose first entry is a ``.tar`` (its first 64 KiB are read)."""
    if not isinstance(src, (str, os.PathLike)):
        return False
    text = os.fspath(src)
    if text.lower().endswith(".tar"):
        return True
    if text.lower().endswith(".txt"):
        try:
            fs, path = filesystem(text, storage_options)
            with fs.open(path, "rb") as file:
                head = file.read(1 << 16).decode("utf-8", "replace")
        except (OSError, ValueError):
            return False
        lines = [ln.strip() for ln in head.splitlines()]
        first = next((ln for ln in lines if ln and not ln.startswith("#")), "")
        return first.lower().endswith(".tar")
    return False


def tar_urls(src: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The tars ``src`` names: one tar, a wildcard (``shards/*.tar``), a brace range
    (``shard-{0000..0099}.tar``, as WebDataset writes it) or a ``.txt`` list (relative entries
    resolved against its directory). Remote URLs keep their protocol.

    Raises:
        ValueError: ``src`` names no tar.
    """
    text = os.fspath(src)
    if text.lower().endswith(".txt"):
        from sdsnodes.index.sources import txt_lines

        fs, path = filesystem(text, storage_options)
        with fs.open(path, "rb") as file:
            names = txt_lines(text, file.read())
        urls = [u for name in names for u in _expand(name, storage_options)]
    else:
        urls = _expand(text, storage_options)
    if not urls:
        raise ValueError(f"{text!r} names no tar file: pass a .tar, a wildcard such as "
                         "'shards/*.tar', a brace range 'shard-{0000..0009}.tar' or a .txt list")  # fmt: skip
    return urls


def _expand(text: str, storage_options: dict[str, Any] | None) -> list[str]:
    match = _BRACES.search(text)
    if match is not None:
        first, last, width = int(match.group(1)), int(match.group(2)), len(match.group(1))
        return [
            u
            for n in range(first, last + 1)
            for u in _expand(
                text[: match.start()] + f"{n:0{width}d}" + text[match.end() :], storage_options
            )  # fmt: skip
        ]
    if not any(c in text for c in "*?["):
        return [text if is_remote(text) else os.path.abspath(local_path(text))]
    fs, path = filesystem(text, storage_options)
    found = sorted(fs.glob(path))
    if not is_remote(text):
        return [os.path.abspath(local_path(p)) for p in found]
    protocol = text.split("://", 1)[0]
    return [p if "://" in p else f"{protocol}://{p}" for p in found]


def scan_tar(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    mode: str = "auto",
    sidecar_max_bytes: int = SIDECAR_MAX_BYTES,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The samples of one tar, in the order their keys first appear.

    Args:
        url (str): a local path or a URL of a tar.
        storage_options (dict | None): fsspec options for ``url``.
        mode (str): how a remote tar is read: ``"auto"`` (see the module docstring),
            ``"headers"`` (a ranged GET per header, bodies skipped) or ``"whole"`` (one GET).
        sidecar_max_bytes (int): larger ``.txt``/``.json``/``.cls`` members are addressed.

    Returns:
        tuple[list[dict], dict[str, int]]: one row per key (see the module docstring), and
        ``{"members", "skipped", "requests", "bytes_read"}`` (requests and bytes of a remote
        tar; a local one counts 0).

    Raises:
        ValueError: the file is not a readable tar (the message names it), or a bad ``mode``.
        FileNotFoundError: no such file.
    """
    if mode not in ("auto", "headers", "whole"):
        raise ValueError(f"{mode=} must be 'auto', 'headers' or 'whole'")
    remote = is_remote(url)
    fs, path = filesystem(url, storage_options)
    if remote:
        source: Any = RangedTar(fs, path, int(fs.size(path)), mode)
    else:
        source = open(local_path(url), "rb")  # noqa: SIM115 - closed below
    rows: dict[str, dict[str, Any]] = {}
    stats = {"members": 0, "skipped": 0, "requests": 0, "bytes_read": 0}
    try:
        with tarfile.open(fileobj=source, mode="r:") as tar:
            while (info := tar.next()) is not None:
                if remote:
                    source.saw_member(info.offset_data + -(-info.size // 512) * 512)
                if not info.isfile():
                    continue  # directories, links, devices
                split = split_key(info.name)
                if split is None:
                    stats["skipped"] += 1  # no extension: no column to put it in
                    continue
                key, ext = split
                row = rows.setdefault(key, {"key": key, "url": url})
                stats["members"] += 1
                _add_member(row, tar, info, url, ext, sidecar_max_bytes)
    except tarfile.TarError as error:
        raise ValueError(f"{url!r} is not a readable tar file: {error}") from error
    finally:
        if remote:
            stats["requests"], stats["bytes_read"] = source.requests, source.bytes_read
        source.close()
    return list(rows.values()), stats


def _add_member(
    row: dict[str, Any], tar: tarfile.TarFile, info: tarfile.TarInfo, url: str, ext: str,
    sidecar_max_bytes: int,
) -> None:  # fmt: skip
    last = ext.rsplit(".", 1)[-1]
    small = info.size <= sidecar_max_bytes
    if small and ext == "txt":
        row["caption"] = _read(tar, info).decode("utf-8", "replace")
        return
    if small and ext == "json":
        try:
            fields = json.loads(_read(tar, info) or b"null")
        except ValueError:
            logger.warning("%s: %s is not JSON; kept as its address", url, info.name)
        else:
            if isinstance(fields, dict):
                add_json_fields(row, fields, OWN_COLUMNS)
                return
    if small and last in INT_SIDECARS:
        text = _read(tar, info).decode("utf-8", "replace").strip()
        row[ext] = int(text) if re.fullmatch(r"[+-]?\d+", text) else text
        return
    if small and ext.endswith(".txt"):
        row[ext[:-4]] = _read(tar, info).decode("utf-8", "replace")
        return
    kind = media_kind(ext)
    column = kind if kind is not None and kind not in row else ext
    row[column] = member_address(url, info.offset_data, info.size)
    if kind is not None and "member" not in row:
        row.update(member=info.name, offset=info.offset_data, size=info.size)


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    file = tar.extractfile(info)
    return b"" if file is None else file.read()


def tar_index(
    src: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    *,
    num_threads: int = 16,
    mode: str = "auto",
    progress: bool = False,
    stats: dict[str, int] | None = None,
) -> pa.Table:
    """An index of the samples in the tar shards ``src`` names (see :func:`tar_urls`), without
    rewriting them: one row per key, tars in order, keys in tar order (module docstring).

    Args:
        src: a tar, a wildcard or brace range of tars, or a ``.txt`` list; local or remote.
        storage_options (dict | None): fsspec options.
        num_threads (int): tars scanned at once, >= 1.
        mode (str): how remote tars are read (:func:`scan_tar`).
        progress (bool): a tqdm bar of tars scanned, on stderr.
        stats (dict | None): filled with the summed ``scan_tar`` counts and ``tars``.

    Returns:
        pyarrow.Table: ``key``, ``url``, ``member``, ``offset`` (int64), ``size`` (int64), the
        media columns (member addresses), ``caption``, then the sidecar fields, sorted by name.
        A field whose values Arrow cannot put in one column (mixed types) is kept as text:
        strings as they are, other values as JSON.

    Raises:
        ValueError: ``src`` names no tar, a tar is unreadable, or they hold no sample.
    """
    if num_threads < 1:
        raise ValueError(f"{num_threads=} must be >= 1")
    urls = tar_urls(src, storage_options)
    with concurrent.futures.ThreadPoolExecutor(min(num_threads, len(urls))) as pool:
        futures = [pool.submit(scan_tar, u, storage_options, mode=mode) for u in urls]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(urls), unit="tar", desc="indexing tars")
        results = []
        for future in futures:
            results.append(future.result())
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    rows = [row for found, _ in results for row in found]
    if stats is not None:
        stats.clear()
        stats["tars"] = len(urls)
        for _, counts in results:
            for name, count in counts.items():
                stats[name] = stats.get(name, 0) + count
    if not rows:
        raise ValueError(f"the tars of {os.fspath(src)!r} hold no sample (members named "
                         "<key>.<extension>, WebDataset's layout)")  # fmt: skip
    names = list(dict.fromkeys(c for row in rows for c in row))
    first = [c for c in OWN_COLUMNS if c in names]
    media = [c for c in names if c not in first and any(parse_member(r.get(c)) for r in rows[:64])]
    order = first + sorted(media) + sorted(c for c in names if c not in first and c not in media)
    return rows_to_table(rows, order, int64=("offset", "size"))
