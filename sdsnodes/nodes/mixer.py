"""Mixer: one stream of items drawn from several streams by weight, synchronized across ranks."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import get_worker_info
from torchdata.nodes import BaseNode

from sdsnodes.nodes._schedule import MixStrategy, draw, normalize
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.graph import NODE_KEY, iter_nodes
from sdsnodes.sample import STREAM

logger = logging.getLogger(__name__)

Weights = Mapping[str, float] | Callable[[int], Mapping[str, float]]


class StopCriterion(str, enum.Enum):
    """When a :class:`Mixer`'s epoch ends."""

    FIRST_EXHAUSTED = "first_exhausted"
    """As soon as any stream runs out."""
    ALL_EXHAUSTED = "all_exhausted"
    """Once every stream ran out at least once; a stream that runs out earlier starts its next
    epoch and keeps being drawn."""
    NEVER = "never"
    """Never: each stream cycles through its own epochs forever."""


class Mixer(BaseNode[dict]):
    """Mix the items (samples or whole batches) of several streams by weight.

    The stream of each item is a pure function of (strategy, weights, seed, draw index), so
    every rank draws the same stream at the same step — batches of different shapes (images vs
    videos) line up across ranks. Inside DataLoader workers (which ``StatefulDataLoader`` visits
    round-robin) every worker makes the same sequence of draws, ``base + local step``: rank r's
    worker w yields what every rank's worker w yields, and each worker reads its own shard of
    every stream in the weights' proportions. Draws go on across epochs (no two epochs repeat
    the same sequence); a curriculum sees the global step ``base + local step * W + w``.
    Every item gets ``item["__stream__"] = name``.

    A stream that cycles (``stop`` ALL_EXHAUSTED or NEVER) and yields nothing in this worker
    even right after a reset — its share of rows is empty, e.g. 3 rows over 4 workers, or smaller
    than one batch with ``drop_last`` — is read padded instead: its readers switch from
    ``uneven="keep"`` to ``"pad"`` (every shard reads ceil(rows / shards) rows, the short ones
    wrapping to the start of the epoch's order), so this worker still yields that stream at its
    draws and the mix keeps the weights. Which streams are padded is part of the state.

    Args:
        streams (Mapping[str, BaseNode]): name → graph; items must be dicts.
        weights (Mapping[str, float] | Callable[[int], Mapping[str, float]] | None): weight per
            stream (normalized), or a function of the global step (a curriculum); None = equal.
        strategy (MixStrategy | str): see :class:`~sdsnodes.MixStrategy`.
        stop (StopCriterion | str): see :class:`StopCriterion`.
        seed (int): seed of the draws and orders.
        cycle_length (int | None): items per cycle of the ordered strategies; None derives the
            shortest exact one from the weights. Required with weights that are a function.

    State:
        ``{"step": int, "num_workers": int, "base_step": int, "mixer": str, "exhausted": [names],
        "padded": [names], "streams": {name: state}}`` (``step`` is local to the worker), each
        key a class constant (``STEP_KEY``, …), and the tag ``NODE_KEY: STATE_TAG`` by which
        elastic resume finds it.

    Raises:
        ValueError: no streams, bad weights, unknown strategy or stop criterion, or a
            curriculum with an ordered strategy and no ``cycle_length``; while iterating, a
            stream that yields nothing in this worker even when padded (or whose readers pad or
            drop already).
    """

    STATE_TAG = "Mixer"
    """``state[NODE_KEY]``: how elastic resume finds the Mixers' states in a loader's state."""
    STEP_KEY = "step"
    WORKERS_KEY = "num_workers"
    BASE_STEP_KEY = "base_step"
    MIXER_KEY = "mixer"
    EXHAUSTED_KEY = "exhausted"
    PADDED_KEY = "padded"
    STREAMS_KEY = "streams"

    def __init__(
        self,
        streams: Mapping[str, BaseNode],
        weights: Weights | None = None,
        strategy: MixStrategy | str = MixStrategy.WEIGHTED_RANDOM,
        stop: StopCriterion | str = StopCriterion.ALL_EXHAUSTED,
        seed: int = 0,
        cycle_length: int | None = None,
    ) -> None:
        super().__init__()
        if not streams:
            raise ValueError("Mixer needs at least one stream")
        self.streams = dict(streams)
        self.names = list(self.streams)
        try:
            self.strategy = MixStrategy(strategy)
            self.stop = StopCriterion(stop)
        except ValueError as error:
            raise ValueError(
                f"{error}; strategies: {[s.value for s in MixStrategy]}, stops: {[s.value for s in StopCriterion]}"
            ) from None
        if cycle_length is not None and cycle_length < 1:
            raise ValueError(f"{cycle_length=} must be >= 1")
        self.weights = weights if weights is not None else {n: 1.0 for n in self.names}
        if callable(self.weights):
            if self.strategy is not MixStrategy.WEIGHTED_RANDOM and cycle_length is None:
                raise ValueError(
                    "weights that change with the step need cycle_length with an ordered strategy"
                )
            normalize(self.weights(0), self.names)
        else:
            normalize(self.weights, self.names)
        self.seed = int(seed)
        self.cycle_length = cycle_length
        self.mixer_id = "0"
        self._name_readers()
        self._readers = {name: self._own_readers(stream) for name, stream in self.streams.items()}
        self._uneven = {name: [r.uneven for r in rs] for name, rs in self._readers.items()}
        self._padded: set[str] = set()
        self._base_step = 0
        self._next_base_step: int | None = None
        self._started = False
        self._step = 0
        self._worker, self._num_workers = 0, 1
        self._exhausted: set[str] = set()

    def _name_readers(self) -> None:
        """Prefix the ids of the readers and mixers inside each stream with the stream's name, so
        an elastic cursor can tell them apart."""
        for name, stream in self.streams.items():
            for node in iter_nodes(stream):
                if isinstance(node, EpochReader):
                    node.reader_id = f"{name}/{node.reader_id}"
                elif isinstance(node, Mixer):
                    node.mixer_id = f"{name}/{node.mixer_id}"

    @staticmethod
    def _own_readers(stream: BaseNode) -> list[EpochReader]:
        """The readers of ``stream`` that no Mixer nested inside it manages (it pads its own)."""
        nodes = list(iter_nodes(stream))
        nested = {
            id(r)
            for node in nodes
            if isinstance(node, Mixer)
            for readers in node._readers.values()
            for r in readers
        }
        return [n for n in nodes if isinstance(n, EpochReader) and id(n) not in nested]

    def _set_padded(self, padded: set[str]) -> None:
        """Make the readers of the ``padded`` streams read ``uneven="pad"`` and give every other
        reader back its own setting (called before the streams reset)."""
        self._padded = set(padded)
        for name, readers in self._readers.items():
            for reader, uneven in zip(readers, self._uneven[name]):
                reader.uneven = "pad" if name in self._padded else uneven

    def _can_pad(self, name: str) -> bool:
        """Whether padding would change what ``name`` yields here: some reader of it keeps
        uneven shards (the default with one rank) and it is not padded yet."""
        return name not in self._padded and any(
            (r.uneven or ("pad" if r.shard.world_size > 1 else "keep")) == "keep"
            for r in self._readers[name]
        )

    def set_base_step(self, step: int) -> None:
        """Start the global step count at ``step`` (the items a job consumed before an elastic
        resume) at the next ``reset()`` without state."""
        self._next_base_step = int(step)

    def _probs(self, step: int) -> list[float]:
        weights = self.weights
        if callable(weights):
            cycle = self.cycle_length
            weights = weights(
                step - step % cycle
                if cycle and self.strategy is not MixStrategy.WEIGHTED_RANDOM
                else step
            )
        return normalize(weights, self.names)

    @property
    def global_step(self) -> int:
        """Global step of the next item (what a curriculum sees): ``base + local step *
        num_workers + worker``, counting on across epochs."""
        return self._base_step + self._step * self._num_workers + self._worker

    @property
    def draw_index(self) -> int:
        """Index of the next draw: ``base + local step``. Every worker makes the same draws in
        the same order, so each reads its own shard of every stream in the weights' proportions,
        and rank r's worker w draws what every other rank's worker w draws."""
        return self._base_step + self._step

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        info = get_worker_info()
        self._worker, self._num_workers = (info.id, info.num_workers) if info else (0, 1)
        if initial_state is None:
            if self._next_base_step is not None:  # an elastic resume
                self._base_step, self._next_base_step = self._next_base_step, None
            elif self._started:  # the next epoch: draws and the curriculum go on
                self._base_step += self._step * self._num_workers
            self._started = True
            self._step = 0
            self._exhausted = set()
            self._set_padded(set())
            for stream in self.streams.values():
                stream.reset(None)
            return
        if int(initial_state[self.WORKERS_KEY]) != self._num_workers:
            raise ValueError(
                f"the Mixer state was saved with num_workers={initial_state[self.WORKERS_KEY]}, now "
                f"{self._num_workers}: resume with the same num_workers"
            )
        self._started = True
        self._step = int(initial_state[self.STEP_KEY])
        self._base_step = int(initial_state.get(self.BASE_STEP_KEY, 0))
        self._exhausted = set(initial_state[self.EXHAUSTED_KEY])
        self._set_padded(set(initial_state.get(self.PADDED_KEY, [])))
        for name, stream in self.streams.items():
            stream.reset(initial_state[self.STREAMS_KEY][name])

    def next(self) -> dict:
        probs = self._probs(self.global_step)
        name = self.names[draw(self.strategy, probs, self.seed, self.draw_index, self.cycle_length)]
        stream = self.streams[name]
        try:
            item = next(stream)
        except StopIteration:
            self._exhausted.add(name)
            drawn = {n for n, p in zip(self.names, probs) if p > 0}  # weight 0: never waited for
            if self.stop is StopCriterion.FIRST_EXHAUSTED or (
                self.stop is StopCriterion.ALL_EXHAUSTED and self._exhausted >= drawn
            ):
                raise
            stream.reset(None)  # the stream's next epoch
            try:
                item = next(stream)
            except StopIteration:
                item = self._next_padded(name)
        if not isinstance(item, dict):
            raise TypeError(
                f"stream {name!r} yielded {type(item).__name__}; Mixer mixes dicts (samples or batches)"
            )
        item[STREAM] = name
        self._step += 1
        return item

    def _next_padded(self, name: str) -> Any:
        """The first item of stream ``name`` read padded, after it yielded nothing in this worker
        even right after a reset (its share of rows is empty or smaller than one batch).

        Raises:
            ValueError: padding cannot help (already padded, or its readers pad or drop), or
                the padded stream yields nothing either.
        """
        stream = self.streams[name]
        if self._can_pad(name):
            logger.info(
                "stream %r has no rows for worker %d of %d: reading it padded (uneven='pad')",
                name,
                self._worker,
                self._num_workers,
            )
            self._set_padded(self._padded | {name})
            stream.reset(None)
            try:
                return next(stream)
            except StopIteration:
                pass
        raise ValueError(
            f"stream {name!r} yields nothing in worker {self._worker} of {self._num_workers}, even "
            "after a reset and padded: its share of rows is empty or smaller than one batch; give "
            "it more rows, use fewer workers, drop_last=False, or uneven='pad' instead of 'drop'"
        )

    def get_state(self) -> dict[str, Any]:
        return {
            NODE_KEY: self.STATE_TAG,
            self.STEP_KEY: self._step,
            self.WORKERS_KEY: self._num_workers,
            self.BASE_STEP_KEY: self._base_step,
            self.MIXER_KEY: self.mixer_id,
            self.EXHAUSTED_KEY: sorted(self._exhausted),
            self.PADDED_KEY: sorted(self._padded),
            self.STREAMS_KEY: {name: s.state_dict() for name, s in self.streams.items()},
        }
