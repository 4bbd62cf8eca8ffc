"""Mixer: one stream of items drawn from several streams by weight, synchronized across ranks."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import get_worker_info
from torchdata.nodes import BaseNode

from sdsnodes.nodes._schedule import MixStrategy, draw, normalize
from sdsnodes.sample import STREAM

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
        "streams": {name: state}}`` (``step`` is local to the worker).

    Raises:
        ValueError: no streams, bad weights, unknown strategy or stop criterion, or a
            curriculum with an ordered strategy and no ``cycle_length``.
    """

    STEP_KEY = "step"
    WORKERS_KEY = "num_workers"
    EXHAUSTED_KEY = "exhausted"
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
        self._base_step = 0
        self._next_base_step: int | None = None
        self._started = False
        self._step = 0
        self._worker, self._num_workers = 0, 1
        self._exhausted: set[str] = set()

    def _name_readers(self) -> None:
        """Prefix the ids of the readers and mixers inside each stream with the stream's name, so
        an elastic cursor can tell them apart."""
        from sdsnodes.nodes._epoch import EpochReader
        from sdsnodes.nodes.graph import iter_nodes

        for name, stream in self.streams.items():
            for node in iter_nodes(stream):
                if isinstance(node, EpochReader):
                    node.reader_id = f"{name}/{node.reader_id}"
                elif isinstance(node, Mixer):
                    node.mixer_id = f"{name}/{node.mixer_id}"

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
        self._base_step = int(initial_state.get("base_step", 0))
        self._exhausted = set(initial_state[self.EXHAUSTED_KEY])
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
                raise ValueError(f"stream {name!r} yields nothing, even after a reset") from None
        if not isinstance(item, dict):
            raise TypeError(
                f"stream {name!r} yielded {type(item).__name__}; Mixer mixes dicts (samples or batches)"
            )
        item[STREAM] = name
        self._step += 1
        return item

    def get_state(self) -> dict[str, Any]:
        return {
            self.STEP_KEY: self._step,
            self.WORKERS_KEY: self._num_workers,
            "base_step": self._base_step,
            "mixer": self.mixer_id,
            self.EXHAUSTED_KEY: sorted(self._exhausted),
            self.STREAMS_KEY: {name: s.state_dict() for name, s in self.streams.items()},
        }
