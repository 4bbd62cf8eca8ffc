"""Where DataLoader workers leave their counters for the training process: one slot of shared
memory per worker, holding the worker's latest snapshot as JSON.

A :class:`MetricsBoard` is made with the dataset (before any worker starts, so forked and
spawned workers share it); each worker writes its slot at most every ``PUBLISH_EVERY_S``
seconds and once more when its iteration ends; :meth:`MetricsBoard.read` in the training
process reads them all. Nothing crosses a queue and no lock is shared: each slot has one
writer, and a sequence number around each write (a seqlock, as Linux's ``seqcount_t``) lets the
reader retry a slot it caught mid-write. A worker started afresh (non-persistent workers, every
epoch) counts on from what its slot held, so the counts are cumulative since the dataset was made.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import struct
import time
from typing import Any

logger = logging.getLogger(__name__)

SLOTS = 64
"""Workers whose counters the board holds (worker ids 0..63; more are not counted)."""
SLOT_BYTES = 8192
"""Bytes of one slot: the snapshot as JSON."""
PUBLISH_EVERY_S = 0.05
"""A worker writes its slot at most this often (and when its iteration ends)."""
_HEADER = struct.Struct("<QQ")  # sequence (odd while writing), length of the JSON
_DATA_AT = 4096
"""Where the slots begin: the headers of all slots come first, in one page. Only that page is
zeroed; a slot's pages are touched when its worker writes (a page or two per worker, where the
whole zeroed board was resident: 512 KiB of shared memory)."""


def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Add ``other``'s numbers into ``into`` (nested dicts key by key); ``into``, changed."""
    for key, value in other.items():
        if isinstance(value, dict):
            merge(into.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
    return into


class MetricsBoard:
    """Shared memory for the snapshots of up to :data:`SLOTS` workers (516 KiB of address space,
    made once; resident: the headers' page and the pages the workers wrote).

    Picklable into spawned workers while they start (as ``multiprocessing.RawArray``).
    """

    def __init__(self) -> None:
        self._buffer = _shared_buffer(_DATA_AT + SLOTS * SLOT_BYTES)
        self._warned = False

    def write(self, slot: int, snapshot: dict[str, Any]) -> None:
        """Publish ``snapshot`` in ``slot`` (one writer per slot)."""
        if not 0 <= slot < SLOTS:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "worker %d: only workers 0..%d are counted in stats()", slot, SLOTS - 1
                )
            return
        data = json.dumps(snapshot, separators=(",", ":")).encode()
        if len(data) > SLOT_BYTES:  # a huge graph: keep the totals
            small = {k: v for k, v in snapshot.items() if k not in ("nodes", "decode_s", "decoded")}
            data = json.dumps(small, separators=(",", ":")).encode()
        view = memoryview(self._buffer).cast("B")
        header, base = slot * _HEADER.size, _DATA_AT + slot * SLOT_BYTES
        seq = _HEADER.unpack_from(view, header)[0]
        _HEADER.pack_into(view, header, seq + 1, 0)  # odd: a write in progress
        view[base : base + len(data)] = data
        _HEADER.pack_into(view, header, seq + 2, len(data))

    def read_slot(self, slot: int) -> dict[str, Any] | None:
        """The snapshot in ``slot``, or None if it never was written."""
        view = memoryview(self._buffer).cast("B")
        header, base = slot * _HEADER.size, _DATA_AT + slot * SLOT_BYTES
        for _ in range(1000):
            seq, length = _HEADER.unpack_from(view, header)
            if seq == 0:
                return None
            if seq % 2 == 0:
                data = bytes(view[base : base + length])
                if _HEADER.unpack_from(view, header)[0] == seq:
                    return json.loads(data)
            time.sleep(0.0001)
        return None  # a writer stopped mid-write (killed): nothing trustworthy there

    def read(self) -> list[dict[str, Any]]:
        """Every written slot's snapshot, by worker id."""
        return [s for s in (self.read_slot(i) for i in range(SLOTS)) if s is not None]


def _shared_buffer(size: int) -> ctypes.Array:
    """``size`` bytes of shared memory from :mod:`multiprocessing`'s heap (inherited by forked
    workers, pickled into spawned ones as a ``RawArray`` is), with only the first page (the
    headers) zeroed. ``RawArray`` zeroes every byte, which makes every page resident; the heap
    may hand out a block used before, so the headers are zeroed and a slot's bytes are read
    only up to the length its header gives."""
    from multiprocessing import sharedctypes

    make = getattr(sharedctypes, "_new_value", None)  # RawArray less its memset (CPython)
    if make is None:
        return multiprocessing.RawArray(ctypes.c_char, size)
    buffer = make(ctypes.c_char * size)
    ctypes.memset(ctypes.addressof(buffer), 0, _DATA_AT)
    return buffer


class Publisher:
    """Writes one worker's snapshots: ``tick()`` per item, ``flush()`` at the end.

    Args:
        board (MetricsBoard): where.
        slot (int): the worker id.
        recorder: the :class:`~sdsnodes._metrics_record.Recorder` of the worker's graph.
        base (dict | None): what the slot held before this worker started, counted on from.
    """

    def __init__(self, board: MetricsBoard, slot: int, recorder: Any, base: dict | None) -> None:
        self.board = board
        self.slot = slot
        self.recorder = recorder
        self.base = base or {}
        self._next_s = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_s:
            self._next_s = now + PUBLISH_EVERY_S
            self.flush()

    def flush(self) -> None:
        snapshot = self.recorder.snapshot()
        in_flight = snapshot["cache"].pop("in_flight")
        out = merge(json.loads(json.dumps(self.base)), snapshot)
        out["cache"]["in_flight"] = in_flight  # a level, not a count: never carried over
        self.board.write(self.slot, out)
