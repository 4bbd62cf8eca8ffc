"""The source stage of a preset over a packed dataset (see :mod:`sdsnodes.index.packed`)."""

from __future__ import annotations

from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.index.materialize import index_cache_root
from sdsnodes.index.packed import is_packed, media_columns, shard_table
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.shard_reader import ShardReader
from sdsnodes.nodes.shuffler import Shuffler
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions, IndexOptions


def packed_source(
    src: Any,
    *,
    cache: CacheOptions | None = None,
    fetch: FetchOptions | None = None,
    errors: ErrorOptions | None = None,
    shuffle: bool = True,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    window: int = 512,
    index: IndexOptions | None = None,
    balance: bool = True,
    batch_size: int | None = None,
    index_cache_dir: str | None = None,
) -> tuple[BaseNode, list[str], list[str]] | None:
    """The source stage of a preset over a packed dataset: IndexReader over the shard table
    (shards split over ranks and workers) → Shuffler (shard order per epoch, when ``shuffle``)
    → ShardReader; with the dataset's columns and its media columns. None when ``src`` is not
    a packed dataset (see :func:`sdsnodes.index.packed.is_packed`).

    With ``balance`` (and ``world_size > 1``) the shards are split without padding (each shard
    read once per epoch) and each ShardReader caps its epoch so that every rank reads as many
    rows, in whole batches of ``batch_size`` when given (:mod:`sdsnodes.nodes._packed_balance`);
    without it, shard counts are padded to equal (a few shards read twice) and ranks read
    unequal rows. The verdict of :func:`~sdsnodes.index.packed.is_packed` is kept in the index
    cache (``index_cache_dir``, else ``<default cache>/index``), so a restart reads no footer.

    Raises:
        ValueError: ``index`` sets an option (filter, rename, max_rows, …): those shape an
            index's rows, and a packed dataset is read shard by shard.
    """
    options = (fetch or FetchOptions()).storage_options
    if not is_packed(src, options, memo_dir=index_cache_root(index_cache_dir)):
        return None
    if index is not None and index != IndexOptions():
        raise ValueError(
            f"{src!r} is a packed dataset (parquet shards with media bytes), read shard by "
            f"shard: {index} does not apply to it. Filter or rename the raw index and pack that "
            "(sds pack), or drop index=..."
        )
    table, schema = shard_table(src, options)
    media = media_columns(schema)
    uneven = "keep" if balance else None  # balanced by rows: no shard read twice
    node: BaseNode = IndexReader(table, rank=rank, world_size=world_size, uneven=uneven)
    if shuffle:
        node = Shuffler(node, seed=seed)
    node = ShardReader(
        node, media, window=window, shuffle=shuffle, seed=seed, cache=cache, fetch=fetch,
        errors=errors, balance=balance, batch_size=batch_size,
    )  # fmt: skip
    return node, list(schema.names), media
