"""Mixer: one stream of items drawn from several streams by weight, synchronized across ranks."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from torch.utils.data import get_worker_info
from torchdata.nodes import BaseNode

from sdsnodes.distributed import rank_and_world_size
from sdsnodes.nodes._schedule import (
    Groups,
    MixStrategy,
    StopCriterion,
    Weights,
    check_mix,
    draw,
    rank_pick,
    weights_at,
)
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.graph import NODE_KEY, iter_nodes
from sdsnodes.sample import ROUNDS_LEFT, STREAM

logger = logging.getLogger(__name__)


class Mixer(BaseNode[dict]):
    """Mix the items (samples or whole batches) of several streams by weight.

    The stream of each item is a pure function of (strategy, weights, seed, draw index), so
    every rank draws the same stream at the same step — batches of different shapes (images vs
    videos) line up across ranks. Inside DataLoader workers (which ``StatefulDataLoader`` visits
    round-robin) every worker makes the same sequence of draws, ``base + local step // B`` (B = 1
    without rounds, below): rank r's
    worker w yields what every rank's worker w yields, and each worker reads its own shard of
    every stream in the weights' proportions. Draws go on across epochs (no two epochs repeat
    the same sequence); a curriculum sees the global step ``base + local step * W + w``.
    Every item gets ``item["__stream__"] = name``.

    **Mixing groups** (``groups``, SDS's ``mixing_group_id``): the strategy draws a *group* at
    each step, with the sum of its streams' weights, the same on every rank; inside the group the
    ranks are split over its streams by their weights, by systematic sampling rotated over the
    ranks: ``floor`` or ``ceil`` of ``p * world_size`` ranks per stream at every step, and every
    rank reads each stream of the group equally often (``p`` of the time, to within one window of
    ``world_size`` draws), so the ranks' shares of a stream are read at one pace. At one step rank 0 may read ``laion`` while
    rank 1 reads ``coyo``. ``groups=None`` (each stream its own group)
    is SDS's ``no_mixing``; one group of every stream, its ``mix_all``.

    **Gradient-accumulation rounds** (``num_accum_rounds=R``): the stream (on each rank) stays
    the same for R consecutive items of the loader, aligned on multiples of R from the start of
    the epoch, so every micro-batch of an optimizer step comes from one stream; each item gets
    ``item["__rounds_left__"]`` (R - 1 down to 0). With W DataLoader workers the stream is drawn
    once per ``lcm(W, R)`` items (``lcm(W, R) / W`` local steps of each worker), so every worker
    still reads every stream in the weights' proportions; with ``W = 1`` once per R. The epoch
    ends only at such a boundary: a stream that runs out inside it starts its next epoch to
    finish it.

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
        groups (Sequence[Sequence[str]] | Mapping[str, Hashable] | None): mixing groups, a
            list of groups of stream names or ``{name: group id}``; None: each stream alone.
            A group of several streams needs ``stop="never"`` (ranks read different streams, so
            they would run out at different steps).
        num_accum_rounds (int): items per gradient-accumulation round, >= 1.
        rank (int | None), world_size (int | None): this rank, for groups; by default from
            ``torch.distributed``, else ``RANK``/``WORLD_SIZE``.

    State:
        ``{"step": int, "num_workers": int, "base_step": int, "mixer": str, "strategy": str,
        "num_accum_rounds": int, "groups": [[names]], "group_draws": [int], "exhausted": [names],
        "padded": [names], "streams": {name: state}}`` (``step`` is local to the worker), each key a class constant
        (``STEP_KEY``, …), and the tag ``NODE_KEY: STATE_TAG`` by which elastic resume finds it.
        A state with another strategy, rounds or groups is refused; one saved without them
        (before they were stored) loads.

    Raises:
        ValueError: no streams, bad weights, unknown strategy or stop criterion, a curriculum
            with an ordered strategy and no ``cycle_length``, bad groups (or a group of several
            streams without ``stop="never"``), ``num_accum_rounds < 1``, or a bad
            rank/world_size pair; on resume, a state saved with another strategy, rounds, groups
            or num_workers; while iterating, a stream that yields nothing in this worker even
            when padded (or whose readers pad or drop already).
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
    STRATEGY_KEY = "strategy"
    ROUNDS_KEY = "num_accum_rounds"
    GROUPS_KEY = "groups"
    GROUP_DRAWS_KEY = "group_draws"

    def __init__(
        self,
        streams: Mapping[str, BaseNode],
        weights: Weights | None = None,
        strategy: MixStrategy | str = MixStrategy.WEIGHTED_RANDOM,
        stop: StopCriterion | str = StopCriterion.ALL_EXHAUSTED,
        seed: int = 0,
        cycle_length: int | None = None,
        groups: Groups | None = None,
        num_accum_rounds: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not streams:
            raise ValueError("Mixer needs at least one stream")
        self.streams = dict(streams)
        self.names = list(self.streams)
        self.strategy, self.stop, self.weights, self.groups = check_mix(
            self.names, weights, strategy, stop, cycle_length, groups, num_accum_rounds
        )
        self.seed, self.cycle_length = int(seed), cycle_length
        self.num_accum_rounds = int(num_accum_rounds)
        if rank is not None or world_size is not None:
            rank_and_world_size(rank, world_size)  # a bad pair fails now
        self.rank, self.world_size = rank, world_size
        self._rank, self._world_size = 0, 1
        self._block = 1
        self._group_draws = [0] * len(self.groups)
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

    def group_names(self) -> list[list[str]]:
        """The mixing groups, as lists of stream names (every stream alone without groups)."""
        return [[self.names[i] for i in g] for g in self.groups]

    def managed_readers(self) -> list[EpochReader]:
        """The readers this Mixer pads when a stream's share is empty (those of its streams
        that no Mixer nested inside them manages)."""
        return [r for readers in self._readers.values() for r in readers]

    @staticmethod
    def _own_readers(stream: BaseNode) -> list[EpochReader]:
        """The readers of ``stream`` that no Mixer nested inside it manages (it pads its own)."""
        nodes = list(iter_nodes(stream))
        nested = {
            id(r) for node in nodes if isinstance(node, Mixer) for r in node.managed_readers()
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
        return weights_at(self.weights, self.names, self.strategy, self.cycle_length, step)

    @property
    def global_step(self) -> int:
        """Global step of the next item (what a curriculum sees): ``base + local step *
        num_workers + worker``, counting on across epochs."""
        return self._base_step + self._step * self._num_workers + self._worker

    @property
    def draw_index(self) -> int:
        """Index of the next draw: ``base + local step // B``, B = ``lcm(W, R) / W`` local steps
        per draw (1 without accumulation rounds). Every worker makes the same draws in the same
        order, so each reads its own shard of every stream in the weights' proportions, and rank
        r's worker w draws what every other rank's worker w draws."""
        return self._base_step + self._step // self._block

    @property
    def rounds_left(self) -> int:
        """Items of the current accumulation round still to come after the next one: the
        loader's items are numbered ``local step * W + worker`` from the start of the epoch."""
        position = self._step * self._num_workers + self._worker
        return self.num_accum_rounds - 1 - position % self.num_accum_rounds

    def _weights_step(self) -> int:
        """The global step at which the weights are read: the item's own, or with rounds the
        first item of its draw on worker 0, so every item of a round sees the same weights."""
        if self.num_accum_rounds == 1:
            return self.global_step
        return self._base_step + (self._step - self._step % self._block) * self._num_workers

    def _pick(self, probs: list[float]) -> str:
        """The stream of the next item: the strategy draws a group, the ranks split over it
        (counting the draws of each group, the same on every rank and worker)."""
        group_probs = [sum(probs[i] for i in g) for g in self.groups]
        g = draw(self.strategy, group_probs, self.seed, self.draw_index, self.cycle_length)
        group = self.groups[g]
        if len(group) == 1:
            return self.names[group[0]]
        if self._step % self._block == 0:  # a new draw of the group
            self._group_draws[g] += 1
        within = [probs[i] for i in group]
        count = self._group_draws[g] - 1
        return self.names[
            group[rank_pick(within, self.seed, g, count, self._rank, self._world_size)]
        ]

    def _ends(self, probs: list[float]) -> bool:
        """Whether the epoch is over by the stop criterion, given the streams that ran out."""
        if self.stop is StopCriterion.FIRST_EXHAUSTED:
            return bool(self._exhausted)
        drawn = {n for n, p in zip(self.names, probs) if p > 0}  # weight 0: never waited for
        return self.stop is StopCriterion.ALL_EXHAUSTED and self._exhausted >= drawn

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        info = get_worker_info()
        self._worker, self._num_workers = (info.id, info.num_workers) if info else (0, 1)
        if any(len(g) > 1 for g in self.groups):  # only groups need the rank
            self._rank, self._world_size = rank_and_world_size(self.rank, self.world_size)
        self._block = math.lcm(self._num_workers, self.num_accum_rounds) // self._num_workers
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
        self._check_config(initial_state)
        if int(initial_state[self.WORKERS_KEY]) != self._num_workers:
            raise ValueError(
                f"the Mixer state was saved with num_workers={initial_state[self.WORKERS_KEY]}, now "
                f"{self._num_workers}: resume with the same num_workers"
            )
        self._started = True
        self._step = int(initial_state[self.STEP_KEY])
        self._base_step = int(initial_state.get(self.BASE_STEP_KEY, 0))
        draws = initial_state.get(self.GROUP_DRAWS_KEY)
        self._group_draws = [int(n) for n in draws] if draws else [0] * len(self.groups)
        self._exhausted = set(initial_state[self.EXHAUSTED_KEY])
        self._set_padded(set(initial_state.get(self.PADDED_KEY, [])))
        for name, stream in self.streams.items():
            stream.reset(initial_state[self.STREAMS_KEY][name])

    def _check_config(self, state: dict[str, Any]) -> None:
        """Refuse a state saved with another strategy, rounds or groups (a state without those
        keys, saved before they were stored, is taken as it is)."""
        saved = {
            "strategy": (state.get(self.STRATEGY_KEY), self.strategy.value),
            "num_accum_rounds": (state.get(self.ROUNDS_KEY), self.num_accum_rounds),
            "groups": (state.get(self.GROUPS_KEY), self.group_names()),
        }
        for what, (then, now) in saved.items():
            if then is not None and then != now:
                hint = (
                    "; before issue 15 'consecutive_interleaved' gave the blocks 'consecutive' "
                    "gives now (a state saved then has no strategy and loads under either)"
                    if what == "strategy" and "consecutive_interleaved" in (then, now)
                    else ""
                )
                raise ValueError(
                    f"the Mixer state was saved with {what}={then!r}, this Mixer has {what}="
                    f"{now!r}: resume with the same {what}{hint}"
                )

    def next(self) -> dict:
        probs = self._probs(self._weights_step())
        at_boundary = self._step % self._block == 0
        if self._block > 1 and at_boundary and self._ends(probs):
            raise StopIteration  # a stream ran out inside the last draw's rounds
        name = self._pick(probs)
        stream = self.streams[name]
        try:
            item = next(stream)
        except StopIteration:
            self._exhausted.add(name)
            if at_boundary and self._ends(probs):
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
        if self.num_accum_rounds > 1:
            item[ROUNDS_LEFT] = self.rounds_left
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
            self.STRATEGY_KEY: self.strategy.value,
            self.ROUNDS_KEY: self.num_accum_rounds,
            self.GROUPS_KEY: self.group_names(),
            self.GROUP_DRAWS_KEY: list(self._group_draws),
            self.EXHAUSTED_KEY: sorted(self._exhausted),
            self.PADDED_KEY: sorted(self._padded),
            self.STREAMS_KEY: {name: s.state_dict() for name, s in self.streams.items()},
        }
