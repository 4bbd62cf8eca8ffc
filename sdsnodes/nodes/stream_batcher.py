"""StreamBatcher: batches whose row r continues the same long stream from batch to batch.

The idea is Pytorch-Stream-Dataloader's (E. Perot, 2020; ``shared/seeds/001``): keep B streams
open, one per batch row, and give recurrent models a flag when a row starts a new stream. Here it
is a node of the graph: resumable at any batch (each open row is rebuilt from the source's state
before its stream, never from tensors), sharded like every reader, and with a third policy
(``drop``) beside the seed's padding and re-reading.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import get_worker_info
from torchdata.nodes import BaseNode

from sdsnodes.errors import DecodeError, ErrorPolicy
from sdsnodes.nodes._threads import register_live
from sdsnodes.nodes.collate import collate
from sdsnodes.nodes.stream_opener import CHUNK, Stream
from sdsnodes.options import ErrorOptions
from sdsnodes.sample import KEY, Sample

IS_FIRST = "is_first"
"""``batch[IS_FIRST]``: bool [B], the row starts a new stream (reset the model's state)."""
IS_PAD = "is_pad"
"""``batch[IS_PAD]``: bool [B], the row is padding (zeros; ``__key__`` None), not data."""
IS_REREAD = "is_reread"
"""``batch[IS_REREAD]``: bool [B], the row re-reads a stream already read this epoch."""
ROW = "__row__"
"""``batch[ROW]``: int64 [B], each row's number in the full batch (0..batch_size-1)."""
WORKER = "__worker__"
"""``batch[WORKER]``: int64 [B], the DataLoader worker that read the row (0 without workers)."""
END = "__end__"
"""Set (True) in the one item a worker yields after its last batch, with ``end_marker``."""


class PadMode(str, enum.Enum):
    """What a row does once the streams of the epoch have run out while other rows go on."""

    PAD = "pad"
    """Zeros with ``is_pad`` True (and ``__key__`` None): every chunk exactly once per epoch."""
    REREAD = "reread"
    """Re-read streams of this epoch from its first (``is_reread`` True), until no row holds a
    stream read for the first time (the seed's other choice: every stream at least once)."""
    DROP = "drop"
    """Leave the batch: it shrinks; ``__row__`` says which rows remain."""


@dataclasses.dataclass
class _Open:
    stream: Stream
    before: str  # the source's state (JSON) just before this stream came out of it
    chunk: int  # the next chunk's number
    reread: bool
    chunks: Iterator[Sample] | None = None

    def next_chunk(self) -> Sample:
        if self.chunks is None:
            self.chunks = self.stream.chunks(self.chunk)
        chunk = next(self.chunks)
        self.chunk = int(chunk[CHUNK]) + 1
        return chunk

    def close(self) -> None:
        if self.chunks is not None:
            self.chunks.close()  # type: ignore[attr-defined]
        self.stream.close()


class StreamBatcher(BaseNode[dict]):
    """Batch ``batch_size`` streams side by side: row r of each batch is the next chunk of row
    r's stream; a row whose stream ended takes the next stream of ``source``.

    In a DataLoader with ``num_workers`` W > 1, each worker keeps its share of the rows, rows
    ``[w * B // W, (w + 1) * B // W)`` for worker w (each worker reads its own streams), and yields
    batches of those rows only; :class:`~sdsnodes.StreamLoader` joins one batch of each worker
    into the full batch, so row r continues the same stream across the batches the training
    loop sees. A stream that cannot be opened, or breaks off mid-way (a corrupt or truncated
    file: :class:`~sdsnodes.errors.DecodeError`), ends; it is counted as skipped (reason
    ``"decode"``, or ``"stream_cut"`` once chunks of it were delivered) and its row takes the next
    stream with ``is_first``. A stream with no chunk (shorter than one chunk) is skipped as
    ``"empty"``.

    Args:
        source (BaseNode): yields :class:`~sdsnodes.nodes.stream_opener.Stream` items (a
            :class:`~sdsnodes.nodes.stream_opener.StreamOpener`); its state must be JSON
            (resuming rebuilds each open row by resetting it to the state before its stream).
        batch_size (int): rows B (all workers together), >= 1.
        pad (PadMode | str): ``"pad"``, ``"reread"`` or ``"drop"``; see :class:`PadMode`.
        errors (ErrorOptions | None): ``on_error`` and ``max_error_rate`` for bad streams
            (the rate is of streams); None: skip, 0.5.
        num_threads (int): threads reading the rows' next chunks side by side (decoding
            releases the GIL); 0 reads them one after the other in the caller's thread.
        collate_fn (Callable): rows → batch (:func:`~sdsnodes.nodes.collate.collate`).
        end_marker (bool): yield ``{END: True, WORKER: w, ROW: rows}`` once after the last
            batch, so a :class:`~sdsnodes.StreamLoader` knows the worker is done (it sets this).

    Returns:
        Batches: the chunks' columns collated (a video chunk: ``video`` uint8 [B, T, 3, H, W]),
        ``__key__`` list[str | None] (the stream's key), ``__chunk__`` int64 [B] (the chunk's
        number in its stream; -1 for padding), ``is_first``, ``is_pad``, ``is_reread`` bool [B],
        ``__row__`` and ``__worker__`` int64 [B].

    State:
        ``{SOURCE_KEY: <source state>, ROWS_KEY: [None | {"source": json str, "chunk": int,
        "key": str, "reread": bool}], ...}``: per open row, the source's state before its
        stream (as a JSON string, so error counts and reader states inside are not found twice)
        and the next chunk's number. O(B), whatever the position; resuming resets the source
        B + 1 times and seeks each stream to its chunk.

    Raises:
        ValueError: ``batch_size`` < 1, an unknown ``pad``, ``num_threads`` < 0; at ``reset``, more DataLoader
            workers than rows, or a state saved with another number of rows per worker.
    """

    SOURCE_KEY = "source"
    ROWS_KEY = "rows"
    START_KEY = "start"  # the source's state at the start of the epoch (reread)
    REREAD_KEY = "reread"  # the source's state before the next stream to re-read
    EXHAUSTED_KEY = "exhausted"
    ENDED_KEY = "ended"
    ERRORS_KEY = "errors"
    ROW_SOURCE_KEY, ROW_CHUNK_KEY, ROW_KEY_KEY, ROW_REREAD_KEY = "source", "chunk", "key", "reread"

    def __init__(
        self,
        source: BaseNode,
        batch_size: int,
        *,
        pad: PadMode | str = PadMode.PAD,
        errors: ErrorOptions | None = None,
        num_threads: int = 4,
        collate_fn: Callable[[Sequence[Sample]], dict] = collate,
        end_marker: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{batch_size=} must be an int >= 1")
        try:
            self.pad = PadMode(pad)
        except ValueError:
            raise ValueError(f"{pad=} must be one of {[m.value for m in PadMode]}") from None
        self.source, self.batch_size, self.collate_fn = source, batch_size, collate_fn
        self.errors = errors or ErrorOptions()
        self.end_marker = bool(end_marker)
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
            raise ValueError(f"{num_threads=} must be an int >= 0 (0: read chunks inline)")
        self.num_threads = num_threads
        self._pool: ThreadPoolExecutor | None = None  # made at reset: the graph stays picklable
        self._open: list[_Open | None] = []
        self._rows: list[int] = []
        self._worker = 0

    # -- epochs and state ---------------------------------------------------------------------
    def _share(self) -> None:
        """This process's rows: all, or worker w's ``[w * B // W, (w + 1) * B // W)``."""
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n > self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} rows cannot be shared by num_workers={n}: each "
                "worker keeps its own rows; use num_workers <= batch_size"
            )
        self._worker = w
        self._rows = list(range(w * self.batch_size // n, (w + 1) * self.batch_size // n))

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._close_all()
        self._share()
        if self.num_threads and self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="StreamBatcher")
            register_live(self)
        self._policy = ErrorPolicy(self.errors.on_error, self.errors.max_error_rate)
        self._open = [None] * len(self._rows)
        state = initial_state or {}
        self._exhausted = bool(state.get(self.EXHAUSTED_KEY, False))
        self._ended = bool(state.get(self.ENDED_KEY, False))
        self._start = state.get(self.START_KEY)
        self._rereading = state.get(self.REREAD_KEY) is not None
        self._policy.load(state.get(self.ERRORS_KEY))
        if initial_state is None:
            self.source.reset(None)
            if self.pad is PadMode.REREAD:
                self._start = json.dumps(self.source.state_dict())
            self._final: dict | None = None
            return
        rows = state[self.ROWS_KEY]
        if len(rows) != len(self._rows):
            raise ValueError(
                f"the state holds {len(rows)} rows, this process has {len(self._rows)} "
                f"(batch_size={self.batch_size} over the DataLoader workers): resume with the "
                "batch_size and num_workers the state was saved with"
            )
        for i, row in enumerate(rows):
            if row is not None:
                self._open[i] = self._reopen(row)
        self._final = state[self.SOURCE_KEY] if self._exhausted else None
        if self._rereading:
            self.source.reset(json.loads(state[self.REREAD_KEY]))
        else:
            self.source.reset(state[self.SOURCE_KEY])

    def _reopen(self, row: dict[str, Any]) -> _Open:
        self.source.reset(json.loads(row[self.ROW_SOURCE_KEY]))
        stream = next(self.source)
        if stream.key != row[self.ROW_KEY_KEY]:
            stream.close()
            raise ValueError(
                f"the source yields stream {stream.key!r} where the state has "
                f"{row[self.ROW_KEY_KEY]!r}: the index or the graph changed since the state was saved"
            )
        chunk, reread = int(row[self.ROW_CHUNK_KEY]), bool(row[self.ROW_REREAD_KEY])
        return _Open(stream, row[self.ROW_SOURCE_KEY], chunk, reread)

    def get_state(self) -> dict[str, Any]:
        rows = [
            None
            if o is None
            else {
                self.ROW_SOURCE_KEY: o.before,
                self.ROW_CHUNK_KEY: o.chunk,
                self.ROW_KEY_KEY: o.stream.key,
                self.ROW_REREAD_KEY: o.reread,
            }
            for o in self._open
        ]
        current = self.source.state_dict()
        return {
            self.SOURCE_KEY: self._final if self._exhausted else current,
            self.ROWS_KEY: rows,
            self.START_KEY: self._start,
            self.REREAD_KEY: json.dumps(current) if self._rereading else None,
            self.EXHAUSTED_KEY: self._exhausted,
            self.ENDED_KEY: self._ended,
            self.ERRORS_KEY: self._policy.state(),
        }

    # -- streams ------------------------------------------------------------------------------
    def _pull(self) -> _Open | None:
        """The next stream for a row: the source's, then (reread) the epoch's again; None: none."""
        if not self._exhausted:
            before = json.dumps(self.source.state_dict())
            try:
                return _Open(next(self.source), before, 0, reread=False)
            except StopIteration:
                self._exhausted, self._final = True, self.source.state_dict()
        if self.pad is not PadMode.REREAD or self._start is None:
            return None
        for attempt in range(2):  # from where re-reading is, else from the epoch's start again
            if not self._rereading or attempt:
                self.source.reset(json.loads(self._start))
                self._rereading = True
            before = json.dumps(self.source.state_dict())
            try:
                return _Open(next(self.source), before, 0, reread=True)
            except StopIteration:
                continue
        return None  # the epoch has no stream at all

    def _step(self, current: _Open) -> Sample | BaseException | None:
        """A stream's next chunk, or what ended it (None: its end; the error); in the pool."""
        try:
            return current.next_chunk()
        except StopIteration:
            return None
        except (DecodeError, OSError) as error:
            return error

    def _fill(self) -> list[Sample | None]:
        """Every row's next chunk (None: no stream left for the row). The rows' chunks are read
        in the pool; a row whose stream ended takes the next one, in row order."""
        chunks: list[Sample | None] = [None] * len(self._rows)
        todo = list(range(len(self._rows)))
        while todo:
            for i in todo:
                if self._open[i] is None:
                    self._open[i] = self._pull()
            rows = [i for i in todo if self._open[i] is not None]
            opened: list[_Open] = [self._open[i] for i in rows]  # type: ignore[misc]
            if self._pool is not None and len(opened) > 1:
                results = list(self._pool.map(self._step, opened))
            else:
                results = [self._step(current) for current in opened]
            todo = []
            for i, current, result in zip(rows, opened, results, strict=True):
                if isinstance(result, dict):
                    chunks[i] = result
                    continue
                self._open[i] = None
                current.close()
                todo.append(i)
                if current.reread:
                    continue
                if isinstance(result, BaseException):
                    reason = "stream_cut" if current.chunk else getattr(result, "reason", "decode")
                    self._policy.skip(reason, result, f"stream {current.stream.key!r}")
                elif current.chunk == 0:
                    empty = ValueError("shorter than one chunk")
                    self._policy.skip("empty", empty, f"stream {current.stream.key!r}")
                else:
                    self._policy.ok()
        return chunks

    def _close_all(self) -> None:
        for current in self._open:
            if current is not None:
                current.close()
        self._open = [None] * len(self._open)

    def next(self) -> dict:
        if self._ended:
            raise StopIteration
        chunks = self._fill()
        fresh = [
            c is not None and not o.reread  # type: ignore[union-attr]
            for c, o in zip(chunks, self._open, strict=True)
        ]
        if not any(fresh):  # the epoch's streams are all read: the rest would be rereads
            self._close_all()
            self._ended = True
            if self.end_marker:
                rows = torch.tensor(self._rows, dtype=torch.int64)
                return {END: True, WORKER: torch.full_like(rows, self._worker), ROW: rows}
            raise StopIteration
        template = next(c for c in chunks if c is not None)
        out = []
        for i, chunk in enumerate(chunks):
            if chunk is None and self.pad is PadMode.DROP:
                continue
            row = _pad_like(template) if chunk is None else dict(chunk)
            current = self._open[i]
            row[IS_FIRST] = chunk is not None and int(chunk[CHUNK]) == 0
            row[IS_PAD] = chunk is None
            row[IS_REREAD] = chunk is not None and current is not None and current.reread
            row[ROW], row[WORKER] = self._rows[i], self._worker
            out.append(row)
        return self.collate_fn(out)

    def shutdown(self) -> None:
        """Close the open streams (their cached files are unpinned) and stop the threads."""
        self._close_all()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _pad_like(chunk: Sample) -> Sample:
    """A padding row shaped like ``chunk``: tensors zeroed, numbers 0, the rest None."""
    out: Sample = {}
    for key, value in chunk.items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.zeros_like(value)
        elif type(value) in (int, float, bool):
            out[key] = type(value)()
        else:
            out[key] = None
    out[KEY], out[CHUNK] = None, -1
    return out
