"""``build_metadata_graph``: index rows only, no media (re-exported by :mod:`sdsnodes.presets`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa
from torchdata.nodes import BaseNode

from sdsnodes._preset_parts import assemble
from sdsnodes.options import CacheOptions, FetchOptions, IndexOptions

Src = str | os.PathLike | pa.Table


def build_metadata_graph(
    src: Src,
    *,
    columns: Sequence[str] | None = None,
    batch_size: int = 256,
    index: IndexOptions | None = None,
    cache: CacheOptions | None = None,
    fetch: FetchOptions | None = None,
    shuffle: bool = True,
    seed: int = 0,
    prefetch_factor: int = 2,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> BaseNode:
    """A graph yielding batches of index rows as they are: nothing downloaded or decoded. For
    metadata-only datasets (captions, embedding paths or class labels in the index, as SDS's
    ``create_standard_metadata_pipeline``) and for looking at an index quickly.

    The chain is the other presets' (IndexReader → Shuffler → Batcher + collate → Prefetcher),
    so it resumes exactly, shards by rank and worker, and takes the same ``index`` options.

    Args:
        src: index source (see :class:`~sdsnodes.IndexReader`), e.g. a directory of ``.txt`` /
            ``.json`` sidecars read with ``read_index(src, group_by_key=True)``.
        columns (Sequence[str] | None): the only index columns kept (names after
            ``index.rename``); None: every column.
        batch_size (int): rows per batch (256).
        cache (CacheOptions | None): only ``cache.cache_dir`` (keeps the converted index) is used.
        fetch (FetchOptions | None): only ``fetch.storage_options`` (for a remote index) is used.

    The other options are as in :func:`build_video_graph`.

    Returns:
        BaseNode: yields dicts with each kept column (numbers as tensors [B], text and other
        values as lists) and ``__key__`` list[str], ``__index__`` / ``__epoch__`` int64 [B].

    Raises:
        ValueError: a bad argument, or a column missing from the index (listed).
    """
    if isinstance(columns, str):
        raise ValueError(f"{columns=} must be a list of column names, e.g. [{columns!r}]")
    return assemble(
        src, {}, columns=dict.fromkeys(columns or (), "columns"), files=[],
        keep=None if columns is None else list(columns),
        index=index, cache=cache, fetch=fetch, errors=None, batch_size=batch_size, shuffle=shuffle,
        seed=seed, num_threads=1, prefetch_factor=prefetch_factor, drop_last=drop_last,
        rank=rank, world_size=world_size,
    )  # fmt: skip
