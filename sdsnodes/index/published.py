"""The index once per cluster: a converted index published to a bucket, fetched by each machine.

:func:`~sdsnodes.index.materialize.materialize` converts an index once per machine. On a cluster
that is once per machine *each*: every node lists the same million-object prefix or parses the
same CSV. :func:`publish` (behind ``sds index build SRC --out URL``) converts it once and writes
to the prefix ``URL`` (local, ``s3://``, ``gs://``, anything fsspec writes):

- ``sdsnodes-index-<fingerprint>.arrow``: the uncompressed Arrow IPC file ``materialize`` keeps
  in its index cache, byte for byte;
- ``sdsnodes-index.json``, written last (a reader never sees a manifest without its file): the
  format, the fingerprint, the file's name, size and sha256, rows, columns, and the source,
  ``filter``, ``rename`` and ``txt`` it was built with.

Any reader given the prefix (``IndexReader("s3://bucket/prefix/")``, a preset, or
:func:`sdsnodes.ray.read_index`) reads the manifest, downloads the file once per machine into
its index cache (checked against the size and sha256, under the same file lock as a
conversion) and memory-maps it; nothing is converted. The fingerprint is the one converting
the source would give, so reader states, ``describe_graph`` and the ranks' fingerprint check
treat both alike.

The published index is a snapshot: a source that changes later is not looked at again; build
it again (the new file has a new fingerprint, so readers of the old manifest are not disturbed
mid-download).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from sdsnodes.index.sources import IndexSourceError
from sdsnodes.storage import fetch, filesystem

logger = logging.getLogger(__name__)
MANIFEST = "sdsnodes-index.json"
FORMAT = "sdsnodes-index"
VERSION = 1
_CHUNK = 8 << 20


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def publish(
    src: str | os.PathLike,
    out: str,
    storage_options: dict[str, Any] | None = None,
    *,
    filter: Any = None,  # noqa: A002 - the field's word
    rename: dict[str, str] | None = None,
    txt: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Convert the index at ``src`` (or find it converted) and write it under the prefix ``out``.

    Args:
        src: index source, as :func:`~sdsnodes.index.materialize.materialize` takes it.
        out (str): a prefix (directory) URL or path, e.g. ``"s3://bucket/indexes/laion/"``.
        storage_options (dict | None): fsspec options, for ``src`` and ``out`` both.
        filter, rename, txt, cache_dir, progress: as for
            :func:`~sdsnodes.index.materialize.materialize`; readers of ``out`` get the rows
            they leave.

    Returns:
        dict: the manifest written (``fingerprint``, ``rows``, ``size`` in bytes, ...).

    Raises:
        IndexSourceError (ValueError): ``src`` is missing, unreadable or empty.
        OSError: ``out`` cannot be written (the message names it); a manifest already there
            stays as it was unless the new one was written whole.
    """
    from sdsnodes.index.materialize import index_cache_root, materialize

    url = os.fspath(src)
    table, key = materialize(url, storage_options, filter=filter, rename=rename, txt=txt,
                             cache_dir=cache_dir, progress=progress)  # fmt: skip
    local = index_cache_root(cache_dir) / f"{key}.arrow"
    name = f"sdsnodes-index-{key}.arrow"
    manifest = {
        "format": FORMAT, "version": VERSION, "fingerprint": key, "file": name,
        "size": local.stat().st_size, "sha256": _sha256(local), "rows": table.num_rows,
        "columns": table.column_names, "source": url,
        "filter": None if filter is None else str(filter), "rename": dict(rename or {}),
        "txt": txt, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    fs, prefix = filesystem(out, storage_options)
    try:
        fs.makedirs(prefix, exist_ok=True)
        fs.put_file(str(local), _join(prefix, name))
        tmp = _join(prefix, f"{MANIFEST}.tmp-{uuid.uuid4().hex[:8]}")
        fs.pipe_file(tmp, json.dumps(manifest, indent=1).encode())
        fs.mv(tmp, _join(prefix, MANIFEST))
    except Exception as error:  # noqa: BLE001 - any filesystem's failure, named with the URL
        raise OSError(
            f"could not publish the index to {out!r}: {type(error).__name__}: {error}"
        ) from error
    logger.info("published index %s (%d rows, %s) to %s", url, table.num_rows, key, out)
    return manifest


def read_manifest(
    url: str, files: list[Any], storage_options: dict[str, Any] | None
) -> dict | None:
    """The manifest of the published index at the prefix ``url``, or None when ``url`` is not
    one (``files`` is what :func:`~sdsnodes.index.materialize.source_files` found: a published
    index is a directory holding :data:`MANIFEST`).

    Raises:
        IndexSourceError: the manifest is damaged, or of a newer format (upgrade sdsnodes).
    """
    if len(files) != 1 or files[0].info.get("type") != "directory":
        return None
    fs = files[0].fs
    path = _join(files[0].info["name"], MANIFEST)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as error:
        raise IndexSourceError(
            f"the published index manifest {url!r} is damaged: {error}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None  # a file of the user's that happens to have this name
    if int(manifest.get("version", 0)) > VERSION:
        raise IndexSourceError(
            f"the index published at {url!r} has format version {manifest['version']}, newer "
            f"than this sdsnodes reads ({VERSION}): upgrade sdsnodes"
        )
    manifest["url"] = _join(url, manifest["file"])
    return manifest


def check_options(manifest: dict, url: str, filter_text: str | None, rename: dict) -> None:
    """Refuse a ``filter``/``rename`` other than the ones the published index was built with.

    Raises:
        IndexSourceError: they differ (the message says how to build it with them).
    """
    built = (manifest.get("filter"), manifest.get("rename") or {})
    if (filter_text is None or filter_text == built[0]) and (not rename or rename == built[1]):
        return
    raise IndexSourceError(
        f"the index published at {url!r} was built with filter={built[0]!r}, rename={built[1]}; "
        f"asked for filter={filter_text!r}, rename={rename}: build it with these (sds index "
        f"build {manifest.get('source')} --out URL --filter ... --rename OLD=NEW) or read the "
        "source itself"
    )


def fetch_published(manifest: dict, storage_options: dict[str, Any] | None, target: Path) -> None:
    """Download the published Arrow file to ``target`` (whole or not at all), checked against
    the manifest's size and sha256; the caller holds the conversion lock."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        fetch(manifest["url"], tmp, storage_options, expected_size=int(manifest["size"]),
              checksum=("sha256", manifest["sha256"]))  # fmt: skip
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "fetched the published index %s (%d rows, %s) instead of converting %s",
        manifest["url"], manifest["rows"], manifest["fingerprint"], manifest.get("source"),
    )  # fmt: skip
