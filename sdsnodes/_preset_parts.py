"""The plumbing every preset shares: checking columns, choosing what to download, and the chain
IndexReader → Shuffler → CachingDownloader → RangeReader → Decoder → Evictor → Batcher + collate
→ Prefetcher. ``sdsnodes.presets`` says *what* each preset decodes; this module says *how*.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from torchdata.nodes import BaseNode, Batcher, Mapper

from sdsnodes.codecs import Codec, Text
from sdsnodes.nodes.collate import collate
from sdsnodes.nodes.decoder import Decoder
from sdsnodes.nodes.downloader import CachingDownloader
from sdsnodes.nodes.evictor import Evictor
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.prefetcher import Prefetcher
from sdsnodes.nodes.range_reader import RangeReader
from sdsnodes.nodes.shuffler import Shuffler

COMMON = (
    "batch_size", "cache_dir", "max_bytes", "storage_options", "shuffle", "seed", "num_threads",
    "download_threads", "retries", "timeout", "prefetch_factor", "drop_last", "on_error",
    "max_error_rate", "rank", "world_size",
)  # fmt: skip
"""The options every preset takes and passes on unchanged to :func:`assemble`."""


_NONE = {"caption_column": "None", "audio": "False", "latent_columns": "()"}
_NONE["embedding_columns"] = "()"  # options that may name no column, and how


def common(scope: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`COMMON` options out of a preset's ``locals()``."""
    return {name: scope[name] for name in COMMON}


def square(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` as (height, width) pixels: an int means a square.

    Raises:
        ValueError: an int < 1.
    """
    if size is None:
        return None
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"{size=} must be >= 1")
        return (size, size)
    return (int(size[0]), int(size[1]))


def has_urls(reader: IndexReader, column: str) -> bool:
    """Whether any value of ``column`` is a remote URL (``scheme://``, not ``file://``)."""
    values = reader.index.table.column(column)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        return False
    remote = pc.and_(
        pc.match_substring(values, "://"), pc.invert(pc.starts_with(values, "file://"))
    )
    return bool(pc.any(remote).as_py())


def caption_codec(
    caption_column: str | Sequence[str] | None, choice: str = "random"
) -> tuple[str | None, Text | None, list[str]]:
    """The caption output column, its codec and the index columns it reads.

    A str decodes that column in place; a list of columns picks one caption per sample
    (``Text(columns=..., choice=choice, with_info=True)``) into ``"caption"``, with the column
    chosen under ``"caption.caption_column"``; None reads no caption.
    """
    if caption_column is None:
        return None, None, []
    if isinstance(caption_column, str):
        return caption_column, Text(), [caption_column]
    columns = list(caption_column)
    return "caption", Text(columns=columns, choice=choice, with_info=True), columns


def assemble(
    src: str | os.PathLike | pa.Table,
    codecs: Mapping[str, Codec],
    *,
    columns: Mapping[str, str],
    files: Sequence[str],
    partial: Sequence[str] = (),
    block_size: int = 1 << 20,
    batch_size: int,
    cache_dir: str | None,
    max_bytes: int | None,
    storage_options: dict[str, Any] | None,
    shuffle: bool,
    seed: int,
    num_threads: int,
    download_threads: int,
    retries: int,
    timeout: float | None,
    prefetch_factor: int,
    drop_last: bool,
    on_error: str,
    max_error_rate: float,
    rank: int | None,
    world_size: int | None,
) -> BaseNode:
    """Chain the nodes of a preset.

    Args:
        src: the index source.
        codecs: output column → codec, in decoding order (a codec may read the sample decoded
            so far, e.g. audio aligned to the clip).
        columns: index column → the preset option naming it, for the error message when the
            index lacks it.
        files: columns of local paths or URLs; those holding URLs are downloaded (one
            CachingDownloader for all of them), except those in ``partial``.
        partial: columns read in byte ranges through a RangeReader (when they hold URLs).
        block_size: the RangeReader's block size in bytes.
        The rest: the common preset options (see :func:`sdsnodes.build_video_graph`).

    Raises:
        ValueError: a bad argument, or a column missing from the index.
    """
    if batch_size < 1:
        raise ValueError(f"{batch_size=} must be >= 1")
    if prefetch_factor < 0:
        raise ValueError(f"{prefetch_factor=} must be >= 0")
    reader = IndexReader(
        src,
        storage_options=storage_options,
        rank=rank,
        world_size=world_size,
        index_cache_dir=None if cache_dir is None else os.path.join(cache_dir, "index"),
    )
    present = reader.column_names
    for column, option in columns.items():
        if column not in present:
            none = f", or {option}={_NONE[option]} for none" if option in _NONE else ""
            raise ValueError(
                f"the index {reader.src!r} has no column {column!r} ({option}); its columns are "
                f"{present}. Pass {option}=<one of them>{none}."
            )
    node: BaseNode = Shuffler(reader, seed=seed) if shuffle else reader
    remote = [c for c in dict.fromkeys(files) if has_urls(reader, c)]  # local files: no threads
    cache = {"cache_dir": cache_dir, "max_bytes": max_bytes, "storage_options": storage_options}
    policy = {"on_error": on_error, "max_error_rate": max_error_rate}
    whole = [c for c in remote if c not in partial]
    if whole:
        node = CachingDownloader(
            node, whole, **cache, num_threads=download_threads, retries=retries,
            timeout=timeout, **policy,
        )  # fmt: skip
    ranged = [c for c in remote if c in partial]
    if ranged:
        node = RangeReader(
            node, ranged, **cache, block_size=block_size, num_threads=download_threads,
            retries=retries, timeout=timeout, **policy,
        )  # fmt: skip
    node = Decoder(node, codecs, num_threads=num_threads, seed=seed, **policy)
    node = Evictor(node)
    node = Mapper(Batcher(node, batch_size=batch_size, drop_last=drop_last), collate)
    return Prefetcher(node, prefetch_factor) if prefetch_factor else node
