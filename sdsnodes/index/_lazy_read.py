"""How a lazy index reads a chunk of row groups: one ranged read per attempt, retried, columns
conformed to the unified schema, then filtered and cut to the chunk's kept rows. A mixin of
:class:`~sdsnodes.index.lazy.LazyIndexTable` (kept apart so that module stays one page)."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdsnodes._retry import Retrier
from sdsnodes.index.sources import IndexSourceError
from sdsnodes.storage import filesystem


class ChunkReading:
    """Reads chunks for :class:`~sdsnodes.index.lazy.LazyIndexTable` (which sets ``_chunks``,
    ``_files``, ``_metadata``, ``_schema``, ``schema``, ``_expression`` and
    ``_storage_options``)."""

    _chunks: list[Any]
    _files: list[Any]
    _metadata: list[pq.FileMetaData]
    _schema: pa.Schema
    schema: pa.Schema
    _expression: Any
    _storage_options: dict[str, Any] | None

    def _rows_of(self, chunk: int, opened: dict[int, pq.ParquetFile]) -> dict[str, pa.Array]:
        """Chunk ``chunk``'s rows: read, filtered, cut to its kept count."""
        spec = self._chunks[chunk]
        arrays = self._read(spec, opened)
        if self._expression is None and spec.rows is None:
            return arrays
        table = pa.table(arrays)
        table = table.filter(self._expression) if self._expression is not None else table
        table = table.slice(0, spec.rows)
        return {name: table.column(name).combine_chunks() for name in table.column_names}

    def _parquet(self, n: int, opened: dict[int, pq.ParquetFile]) -> pq.ParquetFile:
        """File ``n``, opened once per process and thread (its footer known already)."""
        parquet = opened.get(n)
        if parquet is None:
            # fsspec's instance cache gives a forked child a filesystem of its own
            fs, path = filesystem(self._files[n].url, self._storage_options)
            handle = fs.open(path, "rb", cache_type="none")
            parquet = pq.ParquetFile(handle, metadata=self._metadata[n], pre_buffer=True)
            opened[n] = parquet
        return parquet

    def _read(
        self, chunk: Any, opened: dict[int, pq.ParquetFile], columns: list[str] | None = None
    ) -> dict[str, pa.Array]:
        """The chunk's columns (``columns``: those only, original names), conformed to the
        schema; transient errors retried (Retrier: backoff with jitter, 30 s deadline), each
        retry on a freshly opened file."""
        file, groups = self._files[chunk.file], list(chunk.row_groups)
        broken: list[Exception] = []
        present = self._metadata[chunk.file].schema.to_arrow_schema().names
        wanted = None if columns is None else [c for c in columns if c in present]

        def attempt() -> pa.Table | None:
            try:
                parquet = self._parquet(chunk.file, opened)
                return parquet.read_row_groups(groups, columns=wanted, use_threads=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
                broken.append(error)  # the bytes are bad: no retry will mend them
                return None
            except Exception:
                opened.pop(chunk.file, None)
                raise

        table = Retrier(file.url, what=f"row groups {groups}").call(attempt)
        if table is None:
            raise IndexSourceError(
                f"cannot read row groups {groups} of index file {file.url!r}: "
                f"{type(broken[0]).__name__}: {broken[0]}"
            ) from broken[0]
        arrays: dict[str, pa.Array] = {}
        for field, out in zip(self._schema, self.schema):
            if columns is not None and field.name not in columns:
                continue
            if field.name in table.column_names:
                column = table.column(field.name).cast(field.type).combine_chunks()
            else:
                column = pa.nulls(table.num_rows, field.type)
            arrays[out.name] = column
        return arrays


def result_of(future: concurrent.futures.Future) -> dict[str, pa.Array] | None:
    """A prefetched chunk, or None when its read failed (the caller reads it again, and raises
    what that read raises)."""
    try:
        return future.result()
    except Exception:  # noqa: BLE001 - read again in the caller's thread, errors raised there
        return None
