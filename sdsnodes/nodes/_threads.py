"""Ordered, bounded, resumable thread-pool mapping with the skip/raise error policy.

Built on torchdata's ``ParallelMapper`` (threads, in order), which records the source's state
with every item, so a node's state is that of the last item it yielded and resuming neither
loses nor repeats work in flight. Failed items come back as :class:`Skipped` markers and are
dropped (and counted) on the consumer side, so the counts line up with what was yielded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from typing import Any

from torchdata.nodes import BaseNode, ParallelMapper

from sdsnodes.errors import ErrorPolicy, OnError
from sdsnodes.sample import Sample, describe

logger = logging.getLogger(__name__)


_live: weakref.WeakSet = weakref.WeakSet()  # nodes whose threads may be running


MAX_AUTO_THREADS = 8


def auto_threads() -> int:
    """Threads sized to this process's share of the cores: the CPUs it may run on
    (``os.sched_getaffinity``) over the DataLoader's workers (1 outside a worker), at most
    :data:`MAX_AUTO_THREADS` (8); 0 (inline) when that share is one core or less.

    Inline, the work runs in the thread that pulls it (in the presets, the Prefetcher's in the
    training process, the worker's own in a DataLoader worker, where the DataLoader overlaps it
    with the consumer): with 2 DataLoader workers on 2 cores, threads only add
    hand-offs (the two workers' CPU for 2,000 JPEGs: 3.1-3.5 s inline against 3.6-4.1 s with 4
    threads each; ``benchmarks/bench_peers.py``, images task).
    """
    from torch.utils.data import get_worker_info

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    info = get_worker_info()
    workers = info.num_workers if info is not None else 1
    share = cores // max(1, workers)
    return 0 if share <= 1 else min(MAX_AUTO_THREADS, share)


def register_live(node: BaseNode) -> None:
    """Have :func:`shutdown_all` call ``node.shutdown()`` at exit (held weakly)."""
    _live.add(node)


def shutdown_all() -> None:
    """Stop the threads of every ThreadMapNode of this process (run at interpreter exit, so no
    worker thread is inside pyarrow or PyAV while the interpreter tears down)."""
    for node in list(_live):
        node.shutdown()


@dataclasses.dataclass
class Skipped:
    """A sample that could not be processed: why, and the error."""

    reason: str
    error: BaseException
    what: str
    sample: Sample


class ThreadMapNode(BaseNode[Sample]):
    """Base of nodes that apply ``self.process(sample)`` in ``num_threads`` threads, in order.

    Subclasses implement ``process(sample) -> Sample`` (raising on failure) and may override
    ``on_skip(skipped)`` to release resources held by a dropped sample. ``classify(error)``
    names the reason of a failure.

    Args:
        source (BaseNode): upstream node.
        num_threads (int | None): worker threads; 0 runs inline in the caller's thread; None
            sizes them to the cores when the node first runs, in the process that runs it
            (:func:`auto_threads`).
        on_error (OnError | str): ``"skip"`` or ``"raise"``.
        max_error_rate (float): see :class:`sdsnodes.errors.ErrorPolicy`.
        max_in_flight (int | None): items processed or waiting at once (at most
            ``num_threads``); None: ``2 * num_threads``.

    State:
        ``{"source": <ParallelMapper state>, "errors": {"seen": int, "skipped": {reason: int}}}``;
        once the source is exhausted, the mapper state holds the source's final state (with the
        skips after the last item), not the one at the last item, in the layout of the mapper
        in use (threaded: a snapshot; ``num_threads=0``: torchdata's inline ``{"source": …}``).
    """

    SOURCE_KEY = "source"
    ERRORS_KEY = "errors"
    reason = "error"

    def __init__(
        self,
        source: BaseNode,
        num_threads: int | None = 4,
        on_error: OnError | str = OnError.SKIP,
        max_error_rate: float = 0.5,
        max_in_flight: int | None = None,
    ) -> None:
        super().__init__()
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 0):
            raise ValueError(f"{num_threads=} must be an int >= 0, or None (sized to the cores)")
        self.source = source
        self.num_threads = num_threads  # None: sized by auto_threads() at the first reset
        self.max_in_flight = max_in_flight
        self.errors = ErrorPolicy(on_error, max_error_rate)
        self._mapper: ParallelMapper | None = None
        self._threads = num_threads  # the threads in use, once known
        if num_threads is not None:
            self._mapper = self._make_mapper(num_threads)
        self._end_state: dict[str, Any] | None = None

    def _make_mapper(self, threads: int) -> ParallelMapper:
        limit = self.max_in_flight
        window = min(limit, threads) if limit and threads else None
        return ParallelMapper(
            self.source, self._guarded, num_workers=threads, method="thread", max_concurrent=window
        )

    def process(self, sample: Sample) -> Sample:  # pragma: no cover - overridden
        return sample

    def classify(self, error: BaseException) -> str:
        """The reason a failure is counted under."""
        return self.reason

    def on_skip(self, skipped: Skipped) -> None:
        """Hook: release what a dropped sample holds."""

    def is_fatal(self, error: BaseException) -> bool:
        """Hook: errors that stop the run whatever ``on_error`` says (e.g. a full disk)."""
        return False

    def _guarded(self, sample: Sample) -> Sample | Skipped:
        try:
            return self.process(sample)
        except Exception as error:  # noqa: BLE001 - becomes a counted skip or re-raised
            return Skipped(self.classify(error), error, describe(sample), sample)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        _live.add(self)
        self._end_state = None
        if self._mapper is None:  # num_threads=None: sized here, in the process that runs it
            self._threads = auto_threads()
            self._mapper = self._make_mapper(self._threads)
        if initial_state is None:  # a new epoch: counts go on accumulating
            self._mapper.reset(None)
        else:
            self.errors.load(initial_state.get(self.ERRORS_KEY))
            state, replay = _in_layout(initial_state[self.SOURCE_KEY], threaded=bool(self._threads))
            self._mapper.reset(state)
            for done in range(replay):  # items the saved run had yielded past its snapshot
                try:
                    next(self._mapper)
                except StopIteration:
                    raise ValueError(
                        f"the state says {replay} items follow its snapshot, the source ended "
                        f"after {done}: a state from another index or graph"
                    ) from None

    def next(self) -> Sample:
        while True:
            try:
                item = next(self._mapper)
            except StopIteration:
                # the mapper keeps the source's state at its last item; what the source did
                # after it (skips at the tail) is only in the source's final state, safe to read
                # here: the mapper's reader thread has ended
                self._end_state = self.source.state_dict()
                raise
            if not isinstance(item, Skipped):
                self.errors.ok()
                return item
            self.on_skip(item)
            if self.is_fatal(item.error):
                raise item.error
            self.errors.skip(item.reason, item.error, item.what)

    def get_state(self) -> dict[str, Any]:
        mapper = self._mapper.state_dict()
        if self._end_state is not None:
            # the threaded mapper's iterator state is a snapshot; the inline one's is
            # {"source": <state>} (read live, but written the same way for clarity)
            inner = (
                {"snapshot": self._end_state, "steps_since_snapshot": 0}
                if self._threads
                else {self.SOURCE_KEY: self._end_state}
            )
            mapper = {"it_state": inner}
        return {self.SOURCE_KEY: mapper, self.ERRORS_KEY: self.errors.state()}

    def shutdown(self) -> None:
        """Stop the worker threads (they are daemons; this frees them at once)."""
        impl = getattr(self._mapper, "_it", None)
        it = getattr(impl, "_it", None)
        stop = getattr(it, "_shutdown", None)
        if stop is not None:
            stop()


def _in_layout(state: dict[str, Any], threaded: bool) -> tuple[dict[str, Any], int]:
    """A ParallelMapper state in the layout of this node's mapper, and the items to replay.

    torchdata's threaded mapper saves ``{"it_state": {"snapshot": <source state>,
    "steps_since_snapshot": k}}``, its inline one (``num_threads=0``) ``{"it_state": {"source":
    <source state>}}``: the thread count may then differ between the saving and the resuming
    run (``num_threads=None`` sizes it to the machine). Inline → threaded is the snapshot with 0
    steps; threaded → inline resets the source to the snapshot and replays the ``k`` items
    (as the threaded mapper fast-forwards them itself)."""
    inner = state.get("it_state") if isinstance(state, dict) else None
    if not isinstance(inner, dict):
        return state, 0
    if threaded and "source" in inner and "snapshot" not in inner:
        return {**state, "it_state": {"snapshot": inner["source"], "steps_since_snapshot": 0}}, 0
    if not threaded and "snapshot" in inner and "source" not in inner:
        steps = int(inner.get("steps_since_snapshot", 0))
        return {**state, "it_state": {"source": inner["snapshot"]}}, steps
    return state, 0
