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
"""Bytes of one slot: a 16-byte header (sequence, length) and the snapshot as JSON."""
PUBLISH_EVERY_S = 0.05
"""A worker writes its slot at most this often (and when its iteration ends)."""
_HEADER = struct.Struct("<QQ")  # sequence (odd while writing), length of the JSON


def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Add ``other``'s numbers into ``into`` (nested dicts key by key); ``into``, changed."""
    for key, value in other.items():
        if isinstance(value, dict):
            merge(into.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
    return into


class MetricsBoard:
    """Shared memory for the snapshots of up to :data:`SLOTS` workers (512 KiB, made once).

    Picklable into spawned workers while they start (as ``multiprocessing.RawArray``).
    """

    def __init__(self) -> None:
        self._buffer = multiprocessing.RawArray(ctypes.c_char, SLOTS * SLOT_BYTES)
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
        if len(data) > SLOT_BYTES - _HEADER.size:  # a huge graph: keep the totals
            small = {k: v for k, v in snapshot.items() if k not in ("nodes", "decode_s", "decoded")}
            data = json.dumps(small, separators=(",", ":")).encode()
        view = memoryview(self._buffer).cast("B")
        base = slot * SLOT_BYTES
        seq = _HEADER.unpack_from(view, base)[0]
        _HEADER.pack_into(view, base, seq + 1, 0)  # odd: a write in progress
        view[base + _HEADER.size : base + _HEADER.size + len(data)] = data
        _HEADER.pack_into(view, base, seq + 2, len(data))

    def read_slot(self, slot: int) -> dict[str, Any] | None:
        """The snapshot in ``slot``, or None if it never was written."""
        view = memoryview(self._buffer).cast("B")
        base = slot * SLOT_BYTES
        for _ in range(1000):
            seq, length = _HEADER.unpack_from(view, base)
            if seq == 0:
                return None
            if seq % 2 == 0:
                data = bytes(view[base + _HEADER.size : base + _HEADER.size + length])
                if _HEADER.unpack_from(view, base)[0] == seq:
                    return json.loads(data)
            time.sleep(0.0001)
        return None  # a writer stopped mid-write (killed): nothing trustworthy there

    def read(self) -> list[dict[str, Any]]:
        """Every written slot's snapshot, by worker id."""
        return [s for s in (self.read_slot(i) for i in range(SLOTS)) if s is not None]


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
