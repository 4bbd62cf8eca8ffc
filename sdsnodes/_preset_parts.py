"""The plumbing every preset shares: checking columns, choosing what to download, and the chain
IndexReader → Shuffler → Selector → CachingDownloader → RangeReader → Decoder → Evictor →
Batcher + collate → Prefetcher. ``sdsnodes.presets`` says *what* each preset decodes; this module says *how*.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from torchdata.nodes import BaseNode, Batcher, Mapper

from sdsnodes._rotation_options import (  # rotation / decoded cache
    DecodedCacheOptions,
    RotationOptions,
    cache_decoded,
    rotate,
)
from sdsnodes.codecs import AudioWaveform, Codec, Latent, Text, TextEmbedding
from sdsnodes.codecs.text_files import text_file_codecs
from sdsnodes.index.table import SMALL_POOL
from sdsnodes.nodes._packed import packed_source
from sdsnodes.nodes.collate import SlotBatcher, collate
from sdsnodes.nodes.decoder import Decoder
from sdsnodes.nodes.downloader import CachingDownloader
from sdsnodes.nodes.evictor import Evictor
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.prefetcher import Prefetcher
from sdsnodes.nodes.range_reader import RangeReader
from sdsnodes.nodes.select import Selector
from sdsnodes.nodes.shuffler import Shuffler
from sdsnodes.nodes.tar_member_reader import TarMemberReader, addresses_members
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions, IndexOptions

_NONE = {"caption_column": "None", "audio": "False", "latent_columns": "()"}
_NONE["embedding_columns"] = "()"  # options that may name no column, and how
_NONE["columns"] = "None"


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
    """Whether any value of ``column`` is a remote URL (``scheme://``, not ``file://``); tar
    member addresses are not: a TarMemberReader reads them (see :func:`assemble`)."""
    if addresses_members(reader.index.table, column):
        return False
    values = reader.index.table.column(column)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        return False
    if not _may_hold_urls(values):
        return False
    pool = SMALL_POOL
    remote = pc.and_(
        pc.match_substring(values, "://", memory_pool=pool),
        pc.invert(pc.starts_with(values, "file://", memory_pool=pool), memory_pool=pool),
        memory_pool=pool,
    )
    return bool(pc.any(remote, memory_pool=pool).as_py())


_SCHEME_MARK = re.compile(re.escape(b"://"))


def _may_hold_urls(values: pa.ChunkedArray) -> bool:
    """Whether the bytes of a string column hold ``://`` anywhere: False means no value is a
    URL. Searches the chunks' data buffers in place (no copy, no compute kernel: the kernels'
    code pages stay out of the training process and its workers); a True may be a match across
    two values or in a buffer a chunk only slices, so the caller checks the values."""
    for chunk in values.chunks:
        data = chunk.buffers()[2]
        if data is not None and _SCHEME_MARK.search(data):
            return True
    return False


def add_caption(
    codecs: dict[str, Codec],
    columns: dict[str, str],
    caption_column: str | Sequence[str] | None,
    choice: str = "random",
) -> None:
    """Decode captions next (into ``codecs``) and require their index columns (into
    ``columns``, as the ``caption_column`` option's).

    A str decodes that column in place; a list of columns picks one caption per sample
    (``Text(columns=..., choice=choice, with_info=True)``) into ``"caption"``, with the column
    chosen under ``"caption.caption_column"``; None reads no caption.
    """
    if caption_column is None:
        return
    if isinstance(caption_column, str):
        codecs[caption_column] = Text()
        columns[caption_column] = "caption_column"
        return
    read = list(caption_column)
    codecs["caption"] = Text(columns=read, choice=choice, with_info=True)
    columns.update(dict.fromkeys(read, "caption_column"))


def add_audio(
    codecs: dict[str, Codec], columns: dict[str, str], audio: bool | str, video_column: str,
    sample_rate: int, channels: int,
) -> list[str]:  # fmt: skip
    """Decode the clip's audio next (see ``audio`` in :func:`sdsnodes.build_text_to_video_graph`);
    returns the columns of audio files to download.

    Raises:
        ValueError: ``audio`` is not False, True or a column name.
    """
    if audio is True:
        codecs["audio"] = AudioWaveform(
            sample_rate, channels, source_column=video_column, align_to=video_column,
            with_info=True,
        )  # fmt: skip
        return []
    if isinstance(audio, str):
        codecs[audio] = AudioWaveform(sample_rate, channels, align_to=video_column, with_info=True)
        columns[audio] = "audio"
        return [audio]
    if audio is not False:
        raise ValueError(f"{audio=} must be False, True or the name of a column of audio files")
    return []


def embedding_codec(num_tokens: int | None, allow_pickle: bool) -> Codec:
    """The codec of a caption-embedding column: ``TextEmbedding(num_tokens)`` (zeroed after the
    end-of-text token, padded or cut to ``num_tokens`` rows) when ``num_tokens`` is set, else
    ``Latent()`` (the stored shape); pickles only with ``allow_pickle``.

    Raises:
        ValueError: ``num_tokens`` is not None or an int >= 1.
    """
    if num_tokens is None:
        return Latent(allow_pickle=allow_pickle)
    return TextEmbedding(num_tokens=num_tokens, allow_pickle=allow_pickle)


CAPTION_EMBEDDING = "caption_embedding"
"""Where a paired preset puts the chosen caption's embedding."""


def pair_captions(
    caption_column: str | Sequence[str] | None,
    embedding_columns: Sequence[str],
    pair: bool | None,
    choice: str,
) -> dict[str, object] | None:
    """The Selector (its keywords) that chooses a caption together with its own embedding,
    ``caption_column[i]`` ↔ ``embedding_columns[i]``; None when they are not paired (see
    ``pair_embeddings`` in :func:`sdsnodes.build_text_to_video_graph`).

    Raises:
        ValueError: ``pair=True`` without as many caption columns as embedding columns.
    """
    captions = [] if caption_column is None or isinstance(caption_column, str) else caption_column
    same = bool(embedding_columns) and len(list(captions)) == len(embedding_columns)
    if pair is None:
        pair = same
    if not pair:
        return None
    if not same:
        raise ValueError(
            f"pair_embeddings=True pairs caption_column[i] with embedding_columns[i]; "
            f"{caption_column=} and {list(embedding_columns)=} are not two lists of one "
            "length. Give the embedding of each caption column, or pair_embeddings=False"
        )
    return {
        "candidates": {"caption": list(captions), CAPTION_EMBEDDING: list(embedding_columns)},
        "files": [CAPTION_EMBEDDING],
        "choice": choice,
    }


def add_embeddings(
    codecs: dict[str, Codec], columns: dict[str, str], files: list[str],
    caption_column: str | Sequence[str] | None, choice: str, embedding_columns: Sequence[str],
    pair: bool | None, *, embedding_tokens: int | None, allow_pickle: bool,
) -> dict[str, object] | None:  # fmt: skip
    """Decode the captions and their embeddings next (into ``codecs``, ``columns`` and the
    ``files`` to download), paired or not (see :func:`pair_captions`); returns the Selector's
    keywords when paired, else None. Embeddings decode with :func:`embedding_codec`."""
    select = pair_captions(caption_column, embedding_columns, pair, choice)
    if select is not None:
        codecs["caption"] = Text()
        codecs[CAPTION_EMBEDDING] = embedding_codec(embedding_tokens, allow_pickle)
        columns.update(dict.fromkeys(caption_column, "caption_column"))  # type: ignore[arg-type]
        columns.update(dict.fromkeys(embedding_columns, "embedding_columns"))
        files.append(CAPTION_EMBEDDING)
        return select
    add_caption(codecs, columns, caption_column, choice)
    for column in embedding_columns:
        codecs[column] = embedding_codec(embedding_tokens, allow_pickle)
        columns[column] = "embedding_columns"
    files.extend(embedding_columns)
    return None


def assemble(
    src: str | os.PathLike | pa.Table,
    codecs: Mapping[str, Codec],
    *,
    columns: Mapping[str, str],
    files: Sequence[str],
    partial: Sequence[str] = (),
    block_size: int = 1 << 20,
    select: Mapping[str, object] | None = None,
    keep: Sequence[str] | None = None,
    batch_size: int,
    index: IndexOptions | None = None,
    cache: CacheOptions | None,
    fetch: FetchOptions | None,
    errors: ErrorOptions | None,
    shuffle: bool,
    seed: int,
    num_threads: int | None,
    prefetch_factor: int,
    drop_last: bool,
    rank: int | None,
    world_size: int | None,
    rotation: RotationOptions | None = None,
    decoded_cache: DecodedCacheOptions | None = None,
    balance: bool = True,
) -> BaseNode:
    """Chain the nodes of a preset.

    Args:
        src: the index source; a packed dataset (parquet shards whose media columns are
            ``{bytes, path}`` structs, see :mod:`sdsnodes.pack`) is read by a ShardReader
            (shard order shuffled per epoch, rows within windows) instead of
            IndexReader → Shuffler → downloads.
        codecs: output column → codec, in decoding order (a codec may read the sample decoded
            so far, e.g. audio aligned to the clip).
        columns: index column → the preset option naming it, for the error message when the
            index lacks it.
        files: columns of local paths or URLs; those holding URLs are downloaded (one
            CachingDownloader for all of them), except those in ``partial``.
        partial: columns read in byte ranges through a RangeReader (when they hold URLs).
        block_size: the RangeReader's block size in bytes.
        select: the keywords of a :class:`~sdsnodes.nodes.select.Selector` placed before the
            downloads (``candidates``, ``files``, ``choice``), or None for none; an output
            column of it holds URLs when any of its candidates does.
        keep: the only columns a sample keeps (beside the reserved ``__…__`` keys), or None
            for all of them.
        rotation, decoded_cache: a Rotator after the Evictor, and a DecodedCache in place of
            the download and decode nodes (:mod:`sdsnodes._rotation_options`), or None.
        The rest: the preset's options, each to the node named in
        :func:`sdsnodes.build_video_graph`.

    Raises:
        ValueError: a bad argument, or a column missing from the index.
    """
    if batch_size < 1:
        raise ValueError(f"{batch_size=} must be >= 1")
    if prefetch_factor < 0:
        raise ValueError(f"{prefetch_factor=} must be >= 0")
    cache = cache or CacheOptions()
    fetch = (fetch or FetchOptions()).with_window()
    index_cache_dir = None if cache.cache_dir is None else os.path.join(cache.cache_dir, "index")
    packed = packed_source(
        src, cache=cache, fetch=fetch, errors=errors, shuffle=shuffle, seed=seed, rank=rank,
        world_size=world_size, index=index, balance=balance, batch_size=batch_size,
        index_cache_dir=index_cache_dir,
    )  # fmt: skip
    if packed is not None:  # parquet shards with media bytes: a ShardReader, no downloads
        node, present, media = packed
        reader = None
    else:
        reader = IndexReader(
            src, storage_options=fetch.storage_options, rank=rank, world_size=world_size,
            index_cache_dir=index_cache_dir, index=index,
        )  # fmt: skip
        present, media = reader.column_names, []
    where = src if reader is None else reader.src
    for column, option in columns.items():
        if column not in present:
            none = f", or {option}={_NONE[option]} for none" if option in _NONE else ""
            raise ValueError(
                f"the index {where!r} has no column {column!r} ({option}); its columns are "
                f"{present}. Pass {option}=<one of them>{none}."
            )
    if reader is not None:
        node = Shuffler(reader, seed=seed) if shuffle else reader
    if reader is not None and codecs:  # a caption column of .txt paths: downloaded, then read
        codecs = dict(codecs)
        files = [*files, *text_file_codecs(reader.index.table, codecs)]
    sources = {c: [c] for c in files}  # a file column → the index columns its values come from
    if select is not None:
        candidates: Mapping[str, Sequence[str]] = select["candidates"]  # type: ignore[assignment]
        for name, among in candidates.items():
            if name in present and name not in among:
                raise ValueError(
                    f"the index {where!r} has a column {name!r}, which the choice among "
                    f"{list(among)} would overwrite; rename it (index=IndexOptions(rename=...))"
                )
            sources[name] = list(among)
        node = Selector(node, **select, seed=seed, errors=errors)  # type: ignore[arg-type]
    index_side = node  # rotation / decoded cache: what a DecodedCache reads
    remote = [  # local files: no threads; packed media: bytes already
        c for c in dict.fromkeys(files)
        if not set(sources[c]) <= set(media) and (
            reader is None or any(has_urls(reader, s) for s in sources[c])
        )
    ]  # fmt: skip
    whole = [c for c in remote if c not in partial]
    if whole:
        node = CachingDownloader(node, whole, cache=cache, fetch=fetch, errors=errors)
    ranged = [c for c in remote if c in partial]
    if ranged:
        node = RangeReader(
            node, ranged, block_size=block_size, cache=cache, fetch=fetch, errors=errors
        )
    members = [
        c for c in dict.fromkeys(files)
        if reader is not None and addresses_members(reader.index.table, c)
    ]  # fmt: skip
    if members:  # tar members (sdsnodes.index.tar): only their bytes are read
        node = TarMemberReader(node, members, cache=cache, fetch=fetch, errors=errors)
    if codecs:  # a metadata graph decodes nothing
        node = Decoder(node, codecs, num_threads=num_threads, seed=seed, errors=errors)
    if decoded_cache is not None and node is not index_side:  # rotation / decoded cache
        node = cache_decoded(
            node, index_side, decoded_cache, cache=cache, seed=seed, errors=errors,
            num_threads=max(num_threads or 1, fetch.max_in_flight),  # a miss downloads, then decodes
        )  # fmt: skip
    node = Evictor(node)
    if rotation is not None:  # rotation / decoded cache
        node = rotate(node, rotation, cache=cache, seed=seed)
    if keep is not None:
        node = Mapper(node, functools.partial(_keep_columns, keep=frozenset(keep)))
    # codecs decode straight into the batch unless a node between holds samples back
    batcher = Batcher if rotation is not None or decoded_cache is not None else SlotBatcher
    node = Mapper(batcher(node, batch_size=batch_size, drop_last=drop_last), collate)
    # in DataLoader workers, the DataLoader's own prefetch_factor is enough (see Prefetcher)
    return Prefetcher(node, prefetch_factor, in_workers=False) if prefetch_factor else node


def _keep_columns(sample: dict, keep: frozenset[str]) -> dict:
    return {k: v for k, v in sample.items() if k in keep or k.startswith("__")}
