"""BucketBatcher: batches of samples of one shape bucket (aspect ratio, resolution, duration).

Diffusion and text-to-video models train on batches whose samples share a shape: the
BucketBatcher sends each sample to a bucket (a key function of the sample, e.g.
:class:`AspectRatioBuckets` over the index's ``width``/``height`` columns, or
:class:`DurationBuckets` over ``duration``) and yields a bucket's samples as a list when it holds
``batch_size`` of them, like torchdata's ``Batcher`` (so ``Mapper(node, collate)`` follows). It
holds at most one partial batch per bucket.

How it resumes exactly, and why this way. When the state is taken, the partial buckets hold
samples already read from the source. Three ways to keep them were weighed:

(a) bucket at the index level and store the buffered rows in the state: JSON-able only before
    decoding, the state grows to ``num_buckets * batch_size`` rows, and the decode stages
    after it would have to keep the grouping through skips and read-ahead;
(b) store the source's state from just before the oldest buffered sample, plus which samples
    read since are still buffered, and on resume read those samples again from the source
    (deterministic sources make this exact);
(c) a global bucket plan per epoch from the index columns: the rows' buckets of the whole epoch
    order, batched and dealt to (rank, worker). O(1) state and equal batches per rank by
    construction, but O(rows) work per epoch through the scalar permutation, and only valid for
    a chain whose every node keeps every row (no Filter, no decode skips).

This node does (b): it works anywhere in a graph (before or after the decoder) on any
deterministic source, its state is small and bounded (the source's state, a few counters and
the offsets of at most ``num_buckets * (batch_size - 1)`` buffered samples, never a sample),
and nothing is lost or repeated. The source's state is copied once every ``batch_size`` samples
(an anchor), not per sample, so the replay point is the last anchor at or before the oldest
buffered sample. Its cost is paid at resume: the samples read since that anchor are read again
(downloaded and decoded again when the node sits after the decoder; usually a few
``num_buckets * batch_size``, more when a rare bucket waited long). Put it at the index level
(key from index columns) when that replay must be cheap.

Equal batches per rank. Every shard's batch count depends on how its samples fall into
buckets, so ranks would differ. ``num_batches="even"`` makes them equal without any exchange
between ranks, from two bounds that hold whatever the buckets: a shard of ``m`` samples yields
at least ``ceil(m / batch_size)`` batches counting the partial ones (``drop_last=False``), and
at least ``ceil((m - K * (batch_size - 1)) / batch_size)`` full ones with ``K`` buckets (each
bucket leaves fewer than ``batch_size`` behind; ``drop_last=True``). Every shard stops at its
bound, the full batches first, then (without ``drop_last``) the oldest partial ones. ``m`` is
``len(source)``, the same on every rank when the reader pads (the default for ``world_size >
1``). What is left is counted in ``dropped``: fewer than ``K`` partial batches without
``drop_last`` (what ``drop_last`` alone would drop, or less), at most ``K * (batch_size - 1) +
batch_size - 1`` samples with it, per shard and epoch; the next epoch's order differs, so no
sample is left out for good. It needs a source with ``len()`` that keeps every row
(IndexReader, Shuffler; not after a Filter or a decoder that skips): a shard that gets fewer
samples ends short (a warning is logged).

An exact count (the smallest shard's, computed by every rank from the index columns and the
epoch order: option (c)) would drop less with ``drop_last``; it needs the reader to expose
the rows of any shard of the epoch, which it does not yet (its position-to-row mapping is
private and changing), so it is left for later.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.sample import Sample

logger = logging.getLogger(__name__)

BUCKET = "__bucket__"
"""The key under which each yielded sample carries its bucket (what the key function gave)."""
EVEN = "even"


class BucketBatcher(BaseNode[list[Sample]]):
    """Yield lists of ``batch_size`` samples that share a bucket, ``key(sample)``.

    A batch is yielded as soon as its bucket holds ``batch_size`` samples, so batches come in
    the order their last sample arrived; within a batch, samples keep the source's order. At the
    end of the epoch the partial buckets are yielded (oldest first) or, with ``drop_last``,
    dropped and counted in :attr:`dropped`. Each sample gets ``sample["__bucket__"] = key``.

    Args:
        source (BaseNode): upstream node yielding sample dicts; deterministic (the same items
            after the same ``reset(state)``), as every sdsnodes graph is.
        batch_size (int): samples per batch, >= 1.
        key (Callable[[dict], Hashable]): the sample's bucket, e.g. :class:`AspectRatioBuckets`
            or :class:`DurationBuckets`; picklable for spawned DataLoader workers.
        drop_last (bool): drop the partial batches at the end of an epoch.
        num_batches (int | str | None): stop each epoch after this many batches; ``"even"``:
            the number every shard reaches (see the module's docs), which needs ``len(source)``
            and, with ``drop_last``, ``len(key)`` (or ``num_buckets``); None: all.
        num_buckets (int | None): the number of buckets, for ``"even"`` with ``drop_last`` and
            a key without ``len()``.

    State:
        ``{SOURCE_KEY: <the source's state fewer than batch_size samples before the oldest
        buffered one>, REPLAY_KEY: int, BUFFERED_KEY: [offsets], READ_KEY: int, YIELDED_KEY:
        int, DROPPED_KEY: int, NUM_BATCHES_KEY: int | None}``: on resume the source is reset to ``SOURCE_KEY`` and
        ``REPLAY_KEY`` samples are read again, of which those at ``BUFFERED_KEY`` go back into
        their buckets.

    Raises:
        ValueError: ``batch_size`` < 1, a bad ``num_batches``/``num_buckets``, or ``"even"``
            without a bucket count.
        TypeError: ``key`` is not callable; with ``"even"``, a source without ``len()``.
    """

    SOURCE_KEY = "source"
    REPLAY_KEY = "replay"  # samples read since the oldest buffered one (re-read on resume)
    BUFFERED_KEY = "buffered"  # offsets (from the replay point) of the buffered samples
    READ_KEY = "read"  # samples read from the source this epoch
    YIELDED_KEY = "yielded"  # batches yielded this epoch
    DROPPED_KEY = "dropped"  # samples left out this epoch (drop_last, "even")
    NUM_BATCHES_KEY = "num_batches"

    def __init__(
        self,
        source: BaseNode,
        batch_size: int,
        key: Callable[[Sample], Hashable],
        drop_last: bool = False,
        num_batches: int | str | None = None,
        num_buckets: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{batch_size=} must be an int >= 1")
        if not callable(key):
            raise TypeError(f"key must be a function of the sample, got {key!r}")
        if num_batches is not None and num_batches != EVEN:
            if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
                raise ValueError(f"{num_batches=} must be None, 'even' or an int >= 0")
        if num_buckets is not None and (not isinstance(num_buckets, int) or num_buckets < 1):
            raise ValueError(f"{num_buckets=} must be None or an int >= 1")
        if num_buckets is None:
            try:
                num_buckets = len(key)  # type: ignore[arg-type]
            except TypeError:
                pass
        if num_batches == EVEN and drop_last and num_buckets is None:
            raise ValueError(
                "num_batches='even' with drop_last needs the number of buckets: pass "
                "num_buckets=, or a key with len() (AspectRatioBuckets, DurationBuckets)"
            )
        self.source, self.batch_size, self.key = source, batch_size, key
        self.drop_last, self.num_batches, self.num_buckets = drop_last, num_batches, num_buckets
        self._buckets: dict[Hashable, list[tuple[int, Sample]]] = {}  # (offset, sample)
        self._anchors: deque[tuple[int, dict[str, Any]]] = deque()  # (offset, source state)
        self._count = 0  # samples read since the first anchor: offsets count from there
        self._read = self._yielded = self._dropped = 0
        self._limit: int | None = None
        self._exhausted = False

    @property
    def dropped(self) -> int:
        """Samples left out this epoch: partial batches with ``drop_last``, the rest in
        ``"even"`` mode."""
        return self._dropped

    def __bool__(self) -> bool:
        return True  # a node, whatever its len()

    def __len__(self) -> int:
        """Batches this shard yields this epoch, known after ``reset()`` when ``num_batches`` is
        set: with ``"even"`` exactly (for a source that yields ``len(source)`` samples), with an
        int at most."""
        if self._limit is None:
            raise TypeError("len(BucketBatcher) is known only with num_batches set")
        return self._limit

    def _even_limit(self) -> int:
        try:
            m = len(self.source)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"num_batches='even' needs a source with len(), got {type(self.source).__name__}:"
                " put the BucketBatcher right after the reader (IndexReader, Shuffler)"
            ) from None
        b = self.batch_size
        if not self.drop_last:  # sum(ceil(c_k / b)) >= ceil(sum(c_k) / b)
            return math.ceil(m / b)
        return max(0, math.ceil((m - self.num_buckets * (b - 1)) / b))  # each bucket < b left

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._buckets, self._exhausted = {}, False
        state = initial_state or {}
        self.source.reset(state.get(self.SOURCE_KEY))
        self._anchors, self._count = deque(), 0
        buffered = set(state.get(self.BUFFERED_KEY, []))
        for offset in range(int(state.get(self.REPLAY_KEY, 0))):  # read the buffered again
            sample = self._next_from_source()
            if offset in buffered:
                self._buckets.setdefault(self.key(sample), []).append((offset, sample))
        self._forget_anchors()
        self._read = int(state.get(self.READ_KEY, 0))
        self._yielded = int(state.get(self.YIELDED_KEY, 0))
        self._dropped = int(state.get(self.DROPPED_KEY, 0))
        if initial_state is not None:
            self._limit = initial_state.get(self.NUM_BATCHES_KEY)
        elif self.num_batches == EVEN:
            self._limit = self._even_limit()
        else:
            self._limit = self.num_batches  # type: ignore[assignment]

    def _next_from_source(self) -> Sample:
        """The source's next sample; first, every ``batch_size`` samples, an anchor: the
        source's state there (copied: a node may reuse its dicts), a point to replay from."""
        if not self._anchors or self._count - self._anchors[-1][0] >= self.batch_size:
            self._anchors.append((self._count, copy.deepcopy(self.source.state_dict())))
        sample = next(self.source)
        self._count += 1
        return sample

    def _forget_anchors(self) -> None:
        """Keep the latest anchor at or before the oldest buffered sample, and those after."""
        firsts = [entries[0][0] for entries in self._buckets.values()]
        oldest = min(firsts, default=self._count)
        while len(self._anchors) > 1 and self._anchors[1][0] <= oldest:
            self._anchors.popleft()

    def _emit(self, bucket: Hashable) -> list[Sample]:
        batch = [sample for _, sample in self._buckets.pop(bucket)]
        for sample in batch:
            sample[BUCKET] = bucket
        self._yielded += 1
        self._forget_anchors()
        return batch

    def _oldest(self) -> Hashable | None:
        """The bucket holding the oldest buffered sample (None: all empty)."""
        firsts = {bucket: entries[0][0] for bucket, entries in self._buckets.items()}
        return min(firsts, key=firsts.__getitem__) if firsts else None

    def _stop(self) -> None:
        held = sum(len(entries) for entries in self._buckets.values())
        unread = 0
        if self.num_batches == EVEN and not self._exhausted:  # stopped early: the rest unread
            try:
                unread = max(0, len(self.source) - self._read)  # type: ignore[arg-type]
            except TypeError:
                pass
        self._dropped += held + unread
        self._buckets, self._read = {}, self._read + unread
        self._forget_anchors()  # nothing buffered: a resume replays fewer than batch_size
        raise StopIteration

    def next(self) -> list[Sample]:
        if self._limit is not None and self._yielded >= self._limit:
            self._stop()
        while not self._exhausted:
            try:
                sample = self._next_from_source()
            except StopIteration:
                self._exhausted = True
                break
            self._read += 1
            bucket = self.key(sample)
            self._buckets.setdefault(bucket, []).append((self._count - 1, sample))
            if len(self._buckets[bucket]) == self.batch_size:
                return self._emit(bucket)
        oldest = self._oldest()
        if oldest is None or self.drop_last:
            if self.num_batches == EVEN and self._yielded < (self._limit or 0):
                logger.warning(
                    "BucketBatcher: the source ended after %d of %d batches (it yielded fewer "
                    "samples than len(source): filtered or skipped upstream?)",
                    self._yielded,
                    self._limit,
                )
            self._stop()
        return self._emit(oldest)

    def get_state(self) -> dict[str, Any]:
        if not self._anchors:  # before the first read
            self._anchors.append((self._count, copy.deepcopy(self.source.state_dict())))
        base, source_state = self._anchors[0]
        offsets = sorted(o - base for entries in self._buckets.values() for o, _ in entries)
        return {
            self.SOURCE_KEY: source_state,
            self.REPLAY_KEY: self._count - base,
            self.BUFFERED_KEY: offsets,
            self.READ_KEY: self._read,
            self.YIELDED_KEY: self._yielded,
            self.DROPPED_KEY: self._dropped,
            self.NUM_BATCHES_KEY: self._limit,
        }


class AspectRatioBuckets:
    """Bucket key: the resolution, among ``resolutions``, whose aspect ratio is nearest the
    sample's (in log ratio, so 2:1 and 1:2 are as far from 1:1).

    Args:
        resolutions (Sequence[tuple[int, int]]): bucket resolutions as (height, width) pixels,
            e.g. ``[(512, 512), (448, 576), (576, 448)]``; the key is one of these tuples, so a
            ``Mapper`` after the BucketBatcher can resize each batch to its key.
        width (str), height (str): the sample's columns holding its size in pixels (index
            columns, before decoding).
        tensor (str | None): read the size from this tensor column's last two dimensions
            (``[..., H, W]``, after decoding) instead of ``width``/``height``.

    Raises:
        ValueError: no resolutions, or one that is not two positive ints.
    """

    def __init__(
        self,
        resolutions: Sequence[tuple[int, int]],
        width: str = "width",
        height: str = "height",
        tensor: str | None = None,
    ) -> None:
        self.resolutions = [tuple(int(x) for x in r) for r in resolutions]
        if not self.resolutions or any(len(r) != 2 or min(r) < 1 for r in self.resolutions):
            raise ValueError(f"{resolutions=} must be (height, width) pairs of positive ints")
        self.width, self.height, self.tensor = width, height, tensor
        self._logs = [math.log(w / h) for h, w in self.resolutions]

    def __len__(self) -> int:
        return len(set(self.resolutions))

    def __call__(self, sample: Sample) -> tuple[int, int]:
        if self.tensor is not None:
            h, w = sample[self.tensor].shape[-2:]
        else:
            w, h = sample[self.width], sample[self.height]
        if not w or not h:
            raise ValueError(f"sample {sample.get('__key__')!r} has no size: {w=}, {h=}")
        ratio = math.log(w / h)
        nearest = min(range(len(self._logs)), key=lambda i: abs(self._logs[i] - ratio))
        return self.resolutions[nearest]


class DurationBuckets:
    """Bucket key: the index ``i`` of the interval ``boundaries[i-1] <= value < boundaries[i]``
    that holds the sample's ``column`` (e.g. duration in seconds, or frames): 0 below the first
    boundary, ``len(boundaries)`` from the last on.

    Args:
        boundaries (Sequence[float]): increasing.
        column (str): the sample's column.

    Raises:
        ValueError: boundaries empty or not increasing.
    """

    def __init__(self, boundaries: Sequence[float], column: str = "duration") -> None:
        self.boundaries = [float(b) for b in boundaries]
        if not self.boundaries or any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{boundaries=} must be a non-empty increasing sequence")
        self.column = column

    def __len__(self) -> int:
        return len(self.boundaries) + 1

    def __call__(self, sample: Sample) -> int:
        import bisect

        return bisect.bisect_right(self.boundaries, float(sample[self.column]))
