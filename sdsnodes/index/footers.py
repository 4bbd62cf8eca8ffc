"""Parquet footers: what a lazy index reads up front (row counts, schema, row-group
boundaries), and ``lazy=None``'s choice of reading an index lazily (see :mod:`sdsnodes.index.lazy`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from typing import Any

import pyarrow.parquet as pq

from sdsnodes.index.materialize import SourceFile, source_files
from sdsnodes.index.sources import IndexSourceError, check_txt_mode
from sdsnodes.storage import is_remote

logger = logging.getLogger(__name__)

LAZY_AUTO_BYTES = 1 << 30
"""``lazy=None`` reads a remote parquet index lazily past this many uncompressed bytes (1 GiB,
the size of the copy every machine would otherwise write)."""
COMPRESSION = 8
"""At most this parquet compression ratio is assumed before reading footers (``lazy=None``)."""


@dataclasses.dataclass(frozen=True)
class Footers:
    """A parquet index's files and their footers: all a lazy index knows up front."""

    url: str
    files: list[SourceFile]
    metadata: list[pq.FileMetaData]

    @property
    def num_rows(self) -> int:
        return sum(m.num_rows for m in self.metadata)

    @property
    def uncompressed_bytes(self) -> int:
        """The rows' uncompressed size, summed over row groups (what materializing would copy)."""
        return sum(
            m.row_group(g).total_byte_size for m in self.metadata for g in range(m.num_row_groups)
        )


def read_footers(
    url: str,
    storage_options: dict[str, Any] | None = None,
    txt: str | None = None,
    files: list[SourceFile] | None = None,
) -> Footers:
    """The files of the parquet index at ``url`` (or ``files``, listed already) and their
    footers (16 read at a time).

    Raises:
        IndexSourceError (ValueError): the source is missing, or a file of it is not parquet.
    """
    check_txt_mode(txt)
    files = source_files(url, storage_options, txt) if files is None else files
    if not files:
        raise IndexSourceError(f"index wildcard {url!r} matches no files")
    others = [f.url for f in files if not _is_parquet(f)]
    if others:
        raise IndexSourceError(
            f"a lazy index reads parquet only, and index {url!r} has {others[0]!r}: pass "
            "lazy=False (the index is converted once into a local file) or convert it to parquet"
        )

    def footer(file: SourceFile) -> pq.FileMetaData:
        try:
            with file.fs.open(file.info["name"], "rb") as f:
                return pq.read_metadata(f)
        except Exception as error:  # noqa: BLE001 - any parse error is the user's input
            raise IndexSourceError(
                f"cannot read the parquet footer of {file.url!r}: {type(error).__name__}: {error}"
            ) from error

    with concurrent.futures.ThreadPoolExecutor(min(16, len(files))) as pool:
        return Footers(url, files, list(pool.map(footer, files)))


def _is_parquet(file: SourceFile) -> bool:
    return file.info.get("type") == "file" and file.info["name"].lower().endswith(".parquet")


def auto_footers(
    url: str,
    storage_options: dict[str, Any] | None,
    txt: str | None,
    filter: Any,  # noqa: A002
) -> Footers | None:
    """``lazy=None``'s choice: the footers when the index should be read lazily (remote parquet
    past :data:`LAZY_AUTO_BYTES`; a filter is then counted by chunks), else None (materialize
    it)."""
    if not is_remote(url):
        return None
    try:
        files = source_files(url, storage_options, txt)
        if not files or not all(map(_is_parquet, files)):
            return None
        if sum(f.info.get("size") or 0 for f in files) * COMPRESSION < LAZY_AUTO_BYTES:
            return None  # small even if compressed 8x: no need to read the footers
        footers = read_footers(url, storage_options, txt, files)
    except IndexSourceError:
        return None  # missing or unreadable: materialize says what is wrong
    if footers.uncompressed_bytes <= LAZY_AUTO_BYTES:
        return None
    logger.info(
        "index %s: %d rows, %.1f GB uncompressed: read lazily by row groups",
        url,
        footers.num_rows,
        footers.uncompressed_bytes / 1e9,
    )
    return footers
