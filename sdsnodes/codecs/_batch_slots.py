"""Decoding into the batch: the rows of the batch being filled, handed to the codecs.

Without this, a clip is decoded into its own tensor and collate copies it into the batch: the
batch's B clips sit in the heap (or the decoding thread's arena) until they are copied, and the
batch exists twice for a moment. With it, :class:`~sdsnodes.nodes.collate.SlotBatcher` pulls
sample ``k`` of a batch with that batch's :class:`BatchSlots` set for its thread; a codec that
decodes inline in that pull (a Decoder with ``num_threads=0``, the presets' default when the
DataLoader's workers have a core each or less) and whose outputs all have one shape (a
``VideoClip`` with ``size=(H, W)``) asks :func:`claim` for the memory of its output
and writes its frames there, and :func:`gather` gives collate the whole batch, which it returns
without copying. In a DataLoader worker the rows are in shared memory, as collate's own output
would be, so passing the batch to the main process copies nothing either.

A row is handed out once per batch, never again, so no two samples can share memory. Anything
that breaks the pattern (a sample decoded in a pool thread, a second sample decoded in one pull
because the first was skipped, a transform that returns a new tensor, a sample held back by a
buffer) only loses the saving: :func:`gather` checks every row and collate copies otherwise.
A row keeps its whole batch's memory alive, so the presets use the SlotBatcher only where no
node between the Decoder and the Batcher holds samples back (no rotation, no decoded cache).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

_local = threading.local()  # .slots: BatchSlots | None; .column: the column being decoded


class BatchSlots:
    """The memory of one batch being filled, per decoded column: a tensor ``[size, *shape]``
    allocated at the column's first :meth:`claim`, its rows handed out one per sample."""

    __slots__ = ("_rows", "position", "size")

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.position = 0  # the row the sample being pulled will take
        self._rows: dict[Any, tuple[torch.Tensor, list[bool]]] = {}  # column → (rows, given)

    def claim(self, column: Any, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """Row :attr:`position` of ``column``'s tensor (``shape``, ``dtype``, contiguous,
        uninitialised), or None: another shape or dtype than the column's first, or the row
        was given already (to a sample decoded earlier in the same pull, then skipped)."""
        entry = self._rows.get(column)
        if entry is None:
            entry = self._rows[column] = (
                allocate((self.size, *shape), dtype),
                [False] * self.size,
            )
        rows, given = entry
        k = self.position
        if (
            k >= self.size
            or given[k]
            or tuple(rows.shape[1:]) != tuple(shape)
            or rows.dtype != dtype
        ):
            return None
        given[k] = True
        row = rows[k]
        row.sds_batch_row = (rows, k)  # what gather() checks (a tensor takes attributes)
        return row


def filling(slots: BatchSlots | None) -> None:
    """Set (or, with None, clear) the batch this thread is filling."""
    _local.slots = slots


def decoding(column: Any) -> None:
    """Name the column the codecs called next in this thread decode (a row per column)."""
    _local.column = column


def claim(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor | None:
    """The batch row a codec should write its output (``shape``, ``dtype``) into, or None when
    this thread is filling no batch or the row is not available: allocate your own then.

    Each row is handed out once: a second sample decoded in the same pull gets None.
    """
    slots = getattr(_local, "slots", None)
    if slots is None:
        return None
    return slots.claim(getattr(_local, "column", None), shape, dtype)


def gather(values: list[torch.Tensor]) -> torch.Tensor | None:
    """The batch ``[len(values), *shape]`` that already holds ``values`` as its rows 0, 1, …
    in order (each still the row :func:`claim` gave, unresized), or None."""
    first = getattr(values[0], "sds_batch_row", None)
    if first is None:
        return None
    rows = first[0]
    if len(values) > rows.shape[0]:
        return None
    row_bytes = rows[0].nbytes
    base = rows.data_ptr()
    for j, value in enumerate(values):
        mark = getattr(value, "sds_batch_row", None)
        if (
            mark is None
            or mark[0] is not rows
            or mark[1] != j
            or value.data_ptr() != base + j * row_bytes
            or value.shape != rows.shape[1:]
            or not value.is_contiguous()
        ):
            return None
    return rows if len(values) == rows.shape[0] else rows[: len(values)]


def allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised memory for a batch (``shape``, ``dtype``, contiguous): in shared memory in
    a DataLoader worker (torch's ``default_collate`` recipe, so sending the batch to the main
    process copies nothing), else malloc'ed through numpy: torch's CPU allocator asks glibc for
    64-byte-aligned memory (``posix_memalign``), whose freed chunks a tensor of the same size
    cannot fill again (12-15 MiB of free heap per worker on the clip benchmark, docs/speed.md).
    Like any tensor from numpy, the result's storage cannot grow with ``resize_``."""
    if get_worker_info() is not None:
        numel = int(np.prod(shape))
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
        return torch.empty(0, dtype=dtype).new(storage).resize_(shape)
    try:
        return torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    except TypeError:  # a dtype numpy lacks (bfloat16…)
        return torch.empty(shape, dtype=dtype)
