"""An index held as a pyarrow table, read row by row as sample dicts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sdsnodes.sample import EPOCH, INDEX, KEY, Sample

logger = logging.getLogger(__name__)

SMALL_POOL = pa.system_memory_pool()
"""The memory pool for the small computations a graph makes on its index while it is built
(which columns hold URLs, tar member addresses): glibc's malloc. The first allocation from
pyarrow's default pool (mimalloc) in a process leaves about 4 MiB resident (4,108 KiB of
anonymous memory for 3 KiB of arrays, measured with pyarrow 26), in the training process and
the DataLoader workers forked from it."""


class IndexTable:
    """Random access to the rows of an index as sample dicts.

    Args:
        table (pyarrow.Table): the index.
        columns (Sequence[str] | None): columns every sample must have; those missing from the
            table are filled with None. None keeps the table's columns.
        name (str | None): stream name prefixed to ``__key__`` (``"name/row"``).
        fingerprint (str): identifies the source and options (see :mod:`~sdsnodes.index.materialize`).

    Duplicate ``__key__`` values are reported (a warning, and :attr:`duplicate_keys`).
    """

    def __init__(
        self,
        table: pa.Table,
        columns: Sequence[str] | None = None,
        name: str | None = None,
        fingerprint: str = "table",
    ):
        self.table = table  # possibly memory-mapped: never copied
        self.name = name
        self.fingerprint = fingerprint
        present = list(self.table.column_names)
        self.columns = list(dict.fromkeys([*present, *(columns or [])]))
        self._arrays = {c: self.table.column(c) for c in present if c != KEY}
        self._keys = self.table.column(KEY) if KEY in present else None
        self.duplicate_keys = 0
        if self._keys is not None:
            self.duplicate_keys = len(self) - pc.count_distinct(self._keys).as_py()
            if self.duplicate_keys:
                logger.warning(
                    "the index has %d duplicate __key__ values: random access by key returns the first",
                    self.duplicate_keys,
                )

    def __len__(self) -> int:
        return self.table.num_rows

    def __deepcopy__(self, memo: dict) -> IndexTable:
        return self  # immutable (Arrow tables are): copies of a graph share their index

    @property
    def column_names(self) -> list[str]:
        """Columns present in the table."""
        return list(self.table.column_names)

    def head(self, rows: int = 65_536) -> pa.Table:
        """The first ``rows`` rows (a zero-copy slice)."""
        return self.table.slice(0, rows)

    def localize(
        self, rows: Callable[[int], int] | None, num_shards: int
    ) -> Callable[[int], int] | None:
        """The order an epoch reads this table in: ``rows`` itself (any row is as cheap as any
        other in memory; :class:`~sdsnodes.index.lazy.LazyIndexTable` reorders for locality)."""
        return rows

    def key(self, index: int) -> str:
        """The ``__key__`` of row ``index``: the table's ``__key__`` column, else the row number."""
        raw = self._keys[index].as_py() if self._keys is not None else str(index)
        return f"{self.name}/{raw}" if self.name else str(raw)

    def row_of(self, key: str) -> int | None:
        """The row whose ``__key__`` is ``key``, or None (builds a key → row map on first use)."""
        if getattr(self, "_rows", None) is None:
            self._rows = {}
            if self._keys is not None:
                for i in range(len(self) - 1, -1, -1):  # the first row of a duplicate key wins
                    self._rows[self.key(i)] = i
        if self._keys is None:  # keys are row numbers, optionally prefixed with the name
            prefix = f"{self.name}/" if self.name else ""
            raw = key[len(prefix) :] if key.startswith(prefix) else None
            return int(raw) if raw is not None and raw.isdigit() and int(raw) < len(self) else None
        return self._rows.get(key)

    def sample(self, index: int, epoch: int = 0) -> Sample:
        """Row ``index`` as a sample dict with ``__key__``, ``__index__``, ``__epoch__``.

        Raises:
            IndexError: ``index`` is outside ``[0, len(self))``.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} outside an index of {len(self)} rows")
        out: dict[str, Any] = {KEY: self.key(index), INDEX: index, EPOCH: epoch}
        for column in self.columns:
            if column == KEY:  # set above, with the stream name
                continue
            array = self._arrays.get(column)
            out[column] = array[index].as_py() if array is not None else None
        return out
