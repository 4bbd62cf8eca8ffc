"""Option groups shared by the presets and the nodes: which rows of the index are read
(:class:`IndexOptions`), where the cache lives and how big it may grow (:class:`CacheOptions`),
how remote files are fetched (:class:`FetchOptions`), and what a bad sample does
(:class:`ErrorOptions`).

Each group is a small frozen dataclass, checked when it is made, so a mistake fails at once with
a message naming the fix. A preset takes the groups and hands each, unchanged, to the nodes that
use it: ``build_video_graph(src, cache=CacheOptions("/mnt/cache", max_bytes=50 << 30))`` reaches
:class:`~sdsnodes.CachingDownloader` and :class:`~sdsnodes.RangeReader` as their ``cache``.

The keywords the groups replaced (``cache_dir``, ``max_bytes``, ``storage_options``,
``download_threads``…) still work for one release, with a :class:`DeprecationWarning`: see
:func:`sdsnodes._renamed.renamed_keywords`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping
from typing import Any

import pyarrow.compute as pc

from sdsnodes._gcs_compose_options import GcsComposeOptions
from sdsnodes._retry import DEFAULT_DEADLINE_S, DEFAULT_RETRIES
from sdsnodes.cache import EvictionPolicy
from sdsnodes.errors import OnError
from sdsnodes.index.filters import parse_filter
from sdsnodes.sample import KEY

DEFAULT_MAX_IN_FLIGHT = 8
"""Samples a node fetches ahead and at once when ``FetchOptions.max_in_flight`` is None."""


def _set(options: Any, name: str, value: Any) -> None:
    object.__setattr__(options, name, value)  # a frozen dataclass normalizing its own field


def _set_member(options: Any, name: str, kind: type[enum.Enum]) -> None:
    """Replace the field ``name`` of ``options`` by its member of the enum ``kind``.

    Raises:
        ValueError: the value is none of ``kind``'s (the message lists them).
    """
    value = getattr(options, name)
    try:
        _set(options, name, kind(value))
    except ValueError:
        names = [member.value for member in kind]
        raise ValueError(
            f"{type(options).__name__}: {name}={value!r} must be one of {names}"
        ) from None


def _check_count(owner: str, name: str, value: Any, unit: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{owner}: {name}={value!r} must be an int >= 1 ({unit}), or None for all")


@dataclasses.dataclass(frozen=True)
class IndexOptions:
    """Which rows of the index a graph reads, under which names, and how the index is held.

    Applied in this order: ``max_index_files`` (which files), ``rename``, ``filter``,
    ``max_rows``, ``key_column``; every column name after the first step is one after ``rename``.

    Args:
        filter (str | pyarrow.compute.Expression | None): keep only the rows matching it, e.g.
            ``"aesthetic > 5 and caption is not None"`` (parsed, never evaluated: see
            :mod:`sdsnodes.index.filters`); None keeps every row. SDS's ``sql_query``.
        rename (Mapping[str, str] | None): index column old name → new name, as the index is
            read; None renames nothing.
        key_column (str | None): the column whose values are the samples' ``__key__`` (SDS's
            ``index_col_name``); the column itself stays in the sample. None: the index's own
            ``__key__`` column, else the row number. With a lazy index the column is read as
            ``__key__`` only (it is renamed), and lookups by key are refused, as for any lazy
            index with keys.
        max_rows (int | None): read only the first ``max_rows`` rows (after ``filter``, in
            index order, so the same rows every run; shuffling then permutes those), >= 1;
            None: all. For debugging runs (SDS's ``max_size``). A lazy index cuts its chunks
            (from the footers alone without a filter; with one, its counting pass stops at
            the cap).
        max_index_files (int | None): read only the first ``max_index_files`` files of a
            wildcard (its matches sorted by name) or of a ``.txt`` of index shards (in the
            order listed), >= 1; None: all (SDS's ``max_index_files_to_use``). A source of one
            index file has nothing to cap; a directory of media files or a table in memory is
            refused (use ``max_rows``). With ``lazy=None`` the capped index is converted.
        lazy (bool | None): True reads a remote parquet index lazily, by row groups on demand;
            False converts it once per machine into a memory-mapped file; None (default)
            decides by size (see :class:`~sdsnodes.IndexReader`).
        txt (str | None): what a ``.txt`` source lists: ``"index"`` (index shards, SDS's
            ``split_file_paths.txt``), ``"media"`` (one sample per line), or None (by the
            lines' extensions).
        group_by_key (bool | None): how a directory of files is read: None (default) groups
            files by key (one row per key: media columns, ``caption`` from the ``.txt``, the
            ``.json``'s fields) when a sidecar shares its key with a media file, else one row
            per media file; True always groups and keeps keys without media (SDS's metadata
            directories); False never groups. A directory only (other sources are refused);
            read into memory, not converted (see :mod:`sdsnodes.index._sidecars`).

    Raises:
        ValueError: a filter that does not parse, a rename that is not str → str or maps two
            columns to one name, a ``key_column`` that is not a column name (or beside a rename
            to ``__key__``), a cap < 1, ``lazy`` or ``group_by_key`` not True/False/None, an
            unknown ``txt``, ``group_by_key`` beside ``lazy=True`` or ``max_index_files``.
    """

    filter: Any = None  # str | pyarrow.compute.Expression
    rename: Mapping[str, str] | None = None
    key_column: str | None = None
    max_rows: int | None = None
    max_index_files: int | None = None
    lazy: bool | None = None
    txt: str | None = None
    group_by_key: bool | None = None

    def __post_init__(self) -> None:
        if self.filter is not None:
            if not isinstance(self.filter, (str, pc.Expression)):
                raise ValueError(
                    f"IndexOptions: filter={self.filter!r} must be a condition (str), e.g. "
                    '"aesthetic > 5", a pyarrow.compute expression, or None'
                )
            if isinstance(self.filter, str) and not self.filter.strip():
                raise ValueError("IndexOptions: filter='' is empty; pass a condition or None")
            try:
                parse_filter(self.filter)
            except (ValueError, AttributeError, TypeError) as error:
                raise ValueError(f"IndexOptions: {error}") from None
        if self.rename is not None:
            if not isinstance(self.rename, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v
                for k, v in self.rename.items()
            ):
                raise ValueError(
                    f"IndexOptions: rename={self.rename!r} must be a dict of column names, "
                    "old -> new, e.g. {'text': 'caption'}"
                )
            targets = list(self.rename.values())
            if len(set(targets)) < len(targets):
                raise ValueError(
                    f"IndexOptions: rename={dict(self.rename)!r} gives two columns one name"
                )
            _set(self, "rename", dict(self.rename))
        if self.key_column is not None:
            if (
                not isinstance(self.key_column, str)
                or not self.key_column
                or self.key_column == KEY
            ):
                raise ValueError(
                    f"IndexOptions: key_column={self.key_column!r} must name an index column "
                    "(not '__key__': an index with a __key__ column needs no key_column)"
                )
            if KEY in (self.rename or {}).values():
                raise ValueError(
                    f"IndexOptions: key_column={self.key_column!r} and a rename to '__key__' "
                    "both set the key; pass only key_column"
                )
        _check_count("IndexOptions", "max_rows", self.max_rows, "rows")
        _check_count("IndexOptions", "max_index_files", self.max_index_files, "index files")
        if not any(self.lazy is v for v in (True, False, None)):
            raise ValueError(
                f"IndexOptions: lazy={self.lazy!r} must be True, False or None (lazy for big "
                "remote parquet)"
            )
        if not any(self.group_by_key is v for v in (True, False, None)):
            raise ValueError(
                f"IndexOptions: group_by_key={self.group_by_key!r} must be True (one row per "
                "key), False (one row per media file) or None (by the directory's files)"
            )
        if self.group_by_key is not None and (self.lazy or self.max_index_files is not None):
            what = "lazy=True" if self.lazy else "max_index_files"
            raise ValueError(
                f"IndexOptions: group_by_key={self.group_by_key} reads a directory of files, "
                f"and {what} applies to parquet index files; pass only one"
            )
        if self.txt not in (None, "index", "media"):
            raise ValueError(
                f"IndexOptions: txt={self.txt!r} must be 'index' (a .txt of index shards), "
                "'media' (a .txt of media files) or None (told by the lines' extensions)"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndexOptions):
            return NotImplemented
        # a pyarrow Expression's == builds an expression: compare filters by their text
        mine, theirs = dataclasses.astuple(self), dataclasses.astuple(other)
        return (type(self.filter), str(self.filter), mine[1:]) == (
            type(other.filter), str(other.filter), theirs[1:],
        )  # fmt: skip

    def merged(self, owner: str, **keywords: Any) -> IndexOptions:
        """These options with the keywords of ``owner`` (e.g. ``IndexReader``'s ``filter=``)
        that are not None.

        Raises:
            ValueError: a keyword given here and in these options (one place per setting).
        """
        given = {name: value for name, value in keywords.items() if value is not None}
        both = [name for name in given if getattr(self, name) is not None]
        if both:
            raise ValueError(
                f"{owner}: {both[0]}= and index=IndexOptions({both[0]}=...) both given; pass "
                "only one"
            )
        return dataclasses.replace(self, **given) if given else self


@dataclasses.dataclass(frozen=True)
class CacheOptions:
    """The disk cache that downloaded files and read blocks go through.

    Args:
        cache_dir (str | os.PathLike | None): the cache directory, shared by every process of
            the machine; None uses ``$SDS_CACHE_DIR`` or ``~/.cache/sdsnodes``. Presets also keep
            the converted index under ``<cache_dir>/index``.
        max_bytes (int | None): byte budget of the whole directory, > 0; None (default) is
            unbounded.
        policy (EvictionPolicy | str): which unpinned files go first when the budget is
            exceeded: ``"keepset"`` (default) or ``"lru"`` (see
            :class:`~sdsnodes.cache.EvictionPolicy`).
        ttl (float | None): seconds after its last use when a cached file expires, > 0; None
            (default) never expires files.

    Raises:
        ValueError: ``max_bytes`` <= 0, ``ttl`` <= 0, an unknown ``policy`` or a ``cache_dir``
            that is not a path.
    """

    cache_dir: str | os.PathLike | None = None
    max_bytes: int | None = None
    policy: EvictionPolicy | str = EvictionPolicy.KEEPSET
    ttl: float | None = None

    def __post_init__(self) -> None:
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ValueError(f"CacheOptions: {self.cache_dir=} must be a path or None")
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int)
            or self.max_bytes <= 0
        ):  # fmt: skip
            raise ValueError(
                f"CacheOptions: max_bytes={self.max_bytes!r} must be an int > 0 (bytes), "
                "or None for no budget"
            )
        if self.ttl is not None and not self.ttl > 0:
            raise ValueError(f"CacheOptions: ttl={self.ttl!r} must be None or > 0 (seconds)")
        _set_member(self, "policy", EvictionPolicy)


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """How remote files (S3, GCS, HTTP, any fsspec URL) are fetched.

    Args:
        storage_options (Mapping | None): fsspec options for the URLs (credentials,
            ``endpoint_url``…), also used to read a remote index; None: none. Left out of the
            ``repr``, since it may hold credentials.
        retries (int): most retries of a transient error (5xx, 408, 429, resets, timeouts, short
            bodies) after the first attempt, >= 0, with full-jitter exponential backoff and
            ``Retry-After`` honoured (30 by default, so ``deadline_s`` binds first; see
            docs/retries.md).
        timeout (float | None): seconds one attempt may take (S3, GCS, HTTP), > 0 (60.0); None
            waits as long as the filesystem does.
        deadline_s (float | None): seconds after a file's (or block's) first attempt when no new
            attempt starts, > 0 (30.0): an outage shorter than it loses nothing. None: only
            ``retries`` bounds the attempts.
        max_in_flight (int | None): samples fetched ahead of the consumer and at once, >= 1.
            The :class:`~sdsnodes.CachingDownloader`'s window; the files a
            :class:`~sdsnodes.RangeReader` opens concurrently. None (default): the node's or
            preset's own, :data:`DEFAULT_MAX_IN_FLIGHT` (8), or ``IMAGE_MAX_IN_FLIGHT`` in
            :func:`~sdsnodes.build_image_graph` (small files want more requests in flight),
            also when other options are given (``FetchOptions(storage_options)``).
        gcs_compose (GcsComposeOptions | None): fetch small ``gs://`` objects by composing
            them into one temporary object (a write to the bucket; see
            :class:`~sdsnodes.GcsComposeOptions`); None (default): one GET per object.
        s3_direct (bool): send each ``s3://`` GET as a URL presigned by the s3fs client,
            through one aiohttp connection pool, where the filesystem's options allow it
            (True, the default: 0.68-0.83x s3fs's client CPU per small object in the
            downloader, see ``docs/speed.md``); False: every GET through s3fs.

    Raises:
        ValueError: an argument out of range, or ``storage_options`` not a mapping.
    """

    storage_options: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False)
    retries: int = DEFAULT_RETRIES
    timeout: float | None = 60.0
    deadline_s: float | None = DEFAULT_DEADLINE_S
    max_in_flight: int | None = None
    gcs_compose: GcsComposeOptions | None = None
    s3_direct: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.s3_direct, bool):
            raise ValueError(f"FetchOptions: s3_direct={self.s3_direct!r} must be True or False")
        if self.gcs_compose is not None and not isinstance(self.gcs_compose, GcsComposeOptions):
            raise ValueError(
                f"FetchOptions: gcs_compose={self.gcs_compose!r} must be a GcsComposeOptions() "
                "or None"
            )
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise ValueError(
                f"FetchOptions: storage_options={self.storage_options!r} must be a dict of "
                "fsspec options, e.g. {'anon': True}, or None"
            )
        _set(self, "storage_options", dict(self.storage_options or {}))
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"FetchOptions: retries={self.retries!r} must be an int >= 0")
        for name in ("timeout", "deadline_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"FetchOptions: {name}={value!r} must be None or > 0 (seconds)")
        window = self.max_in_flight
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < 1
        ):
            raise ValueError(
                f"FetchOptions: max_in_flight={window!r} must be an int >= 1 (samples fetched "
                "ahead and at once), or None for the node's or preset's default"
            )

    def with_window(self, default: int = DEFAULT_MAX_IN_FLIGHT) -> FetchOptions:
        """These options, with ``max_in_flight`` set to ``default`` when it is None."""
        if self.max_in_flight is not None:
            return self
        return dataclasses.replace(self, max_in_flight=default)

    @property
    def fetch_kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`sdsnodes.storage.fetch` / ``fetch_soon`` these options set."""
        return {
            "storage_options": self.storage_options,
            "retries": self.retries,
            "timeout": self.timeout,
            "deadline_s": self.deadline_s,
            "s3_direct": self.s3_direct,
        }


@dataclasses.dataclass(frozen=True)
class ErrorOptions:
    """What a node does with a bad sample (missing object, failed download, corrupt file).

    Args:
        on_error (OnError | str): ``"skip"`` (default: count the sample by reason, log it, go on)
            or ``"raise"``.
        max_error_rate (float): in [0, 1] (0.5): once 20 samples were seen, raise
            :class:`~sdsnodes.TooManyErrors` when more than this fraction was skipped, so a
            systemic fault does not look like an empty epoch; 1.0 never raises.

    Raises:
        ValueError: an unknown ``on_error`` or ``max_error_rate`` outside [0, 1].
    """

    on_error: OnError | str = OnError.SKIP
    max_error_rate: float = 0.5

    def __post_init__(self) -> None:
        _set_member(self, "on_error", OnError)
        if isinstance(self.max_error_rate, bool) or not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(
                f"ErrorOptions: max_error_rate={self.max_error_rate!r} must be in [0, 1] "
                "(1.0 never raises)"
            )
