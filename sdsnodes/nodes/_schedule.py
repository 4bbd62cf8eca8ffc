"""Which stream a mixer draws at a given global step: pure functions of (strategy, weights, seed,
step), so every rank and every DataLoader worker agrees without talking to the others.

With mixing groups the strategy draws a group at each step (all ranks alike), and
:func:`rank_pick` then splits the ranks over the streams of that group (each rank its own)."""

from __future__ import annotations

import enum
import functools
import hashlib
import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np


class StopCriterion(str, enum.Enum):
    """When a :class:`Mixer`'s epoch ends."""

    FIRST_EXHAUSTED = "first_exhausted"
    """As soon as any stream runs out."""
    ALL_EXHAUSTED = "all_exhausted"
    """Once every stream ran out at least once; a stream that runs out earlier starts its next
    epoch and keeps being drawn."""
    NEVER = "never"
    """Never: each stream cycles through its own epochs forever."""


Weights = Mapping[str, float] | Callable[[int], Mapping[str, float]]


class MixStrategy(str, enum.Enum):
    """How a :class:`~sdsnodes.Mixer` picks the stream of each item."""

    WEIGHTED_RANDOM = "weighted_random"
    """Draw a stream per item, independently, with probability proportional to its weight."""
    ROUND_ROBIN = "round_robin"
    """Smooth weighted round robin: each cycle holds every stream its integer count of times,
    spread out as evenly as possible (plain alternation when the weights are equal)."""
    FIXED_RANDOM_ORDER = "fixed_random_order"
    """Integer counts from the weights, one shuffled order (from the seed) repeated every cycle."""
    RANDOM_ORDER = "random_order"
    """Integer counts from the weights, the order reshuffled every cycle."""
    CONSECUTIVE = "consecutive"
    """Blocks: ``count`` items from the first stream, then ``count`` from the next, and so on;
    counts {a: 2, b: 3, c: 4} give ``a a b b b c c c c`` every cycle (SDS's ``consecutive``).
    Before issue 15 this order was named ``consecutive_interleaved``."""
    CONSECUTIVE_INTERLEAVED = "consecutive_interleaved"
    """Rounds: one item from each stream that still has items left in the cycle, in the order of
    the streams, round after round; counts {a: 2, b: 3, c: 4} give ``a b c a b c b c c`` every
    cycle (SDS's ``consecutive_interleaved``)."""


Groups = Sequence[Sequence[str]] | Mapping[str, Hashable]
"""Mixing groups: a list of groups of stream names, or ``{name: group id}`` (SDS's
``mixing_group_id``)."""


def uniform(seed: int, step: int | str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, step) (BLAKE2b of both)."""
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def normalize(weights: Mapping[str, float], names: list[str]) -> list[float]:
    """Weights in the order of ``names``, summing to 1.

    Raises:
        ValueError: a weight is negative or not finite, a name is missing or unknown, or all are 0.
    """
    if set(weights) != set(names):
        raise ValueError(
            f"weights name {sorted(weights)}, the streams are {sorted(names)}: give one per stream"
        )
    values = [float(weights[n]) for n in names]
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {dict(weights)}")
    total = sum(values)
    return [v / total for v in values]


def integer_counts(probs: list[float], cycle_length: int | None) -> list[int]:
    """Integer counts per stream for one cycle of an ordered strategy.

    With ``cycle_length`` None, the shortest cycle (<= 1000) whose counts match the weights
    exactly; else counts summing to ``cycle_length`` by largest remainder.
    """
    if cycle_length is None:
        for length in range(1, 1001):
            counts = [p * length for p in probs]
            if all(abs(c - round(c)) < 1e-6 for c in counts):
                return [round(c) for c in counts]
        cycle_length = 1000
    raw = [p * cycle_length for p in probs]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[
        : cycle_length - sum(counts)
    ]:
        counts[i] += 1
    return counts


@functools.lru_cache(maxsize=64)
def cycle_order(
    strategy: MixStrategy, counts: tuple[int, ...], seed: int, cycle: int
) -> tuple[int, ...]:
    """Stream indices of one cycle of an ordered strategy (cached: a cycle is used many steps)."""
    if strategy is MixStrategy.CONSECUTIVE:
        return tuple(i for i, c in enumerate(counts) for _ in range(c))
    if strategy is MixStrategy.CONSECUTIVE_INTERLEAVED:  # round r holds the streams with count > r
        return tuple(i for r in range(max(counts)) for i, c in enumerate(counts) if c > r)
    if strategy is MixStrategy.ROUND_ROBIN:  # smooth weighted round robin (as in nginx)
        current, total, order = [0] * len(counts), sum(counts), []
        for _ in range(total):
            current = [cur + c for cur, c in zip(current, counts)]
            best = max(range(len(counts)), key=lambda i: current[i])
            current[best] -= total
            order.append(best)
        return tuple(order)
    order = np.array([i for i, c in enumerate(counts) for _ in range(c)])
    key = 0 if strategy is MixStrategy.FIXED_RANDOM_ORDER else cycle + 1
    return tuple(np.random.default_rng([seed, key]).permutation(order).tolist())


@functools.lru_cache(maxsize=256)
def _counts(probs: tuple[float, ...], cycle_length: int | None) -> tuple[int, ...]:
    return tuple(integer_counts(list(probs), cycle_length))


def draw(
    strategy: MixStrategy,
    probs: list[float],
    seed: int,
    step: int,
    cycle_length: int | None = None,
) -> int:
    """Index of the stream drawn at global ``step``."""
    if strategy is MixStrategy.WEIGHTED_RANDOM:
        u, acc = uniform(seed, step), 0.0
        for i, p in enumerate(probs):
            acc += p
            if u < acc:
                return i
        return max(i for i, p in enumerate(probs) if p > 0)
    counts = _counts(tuple(probs), cycle_length)
    length = sum(counts)
    cycle = step // length if strategy is MixStrategy.RANDOM_ORDER else 0
    return cycle_order(strategy, counts, seed, cycle)[step % length]


def parse_groups(groups: Groups | None, names: list[str]) -> tuple[tuple[int, ...], ...]:
    """The mixing groups as stream indices (each group in the order of ``names``); None: every
    stream its own group. Groups keep the order given (a mapping: the order of first appearance
    in ``names``), which the ordered strategies follow.

    Raises:
        ValueError: a stream in no group or in two, an unknown name, an empty group, or a group
            given as one string.
    """
    if groups is None:
        return tuple((i,) for i in range(len(names)))
    index = {n: i for i, n in enumerate(names)}
    if isinstance(groups, Mapping):
        if set(groups) != set(names):
            raise ValueError(
                f"groups name {sorted(groups)}, the streams are {sorted(names)}: give each stream "
                "a group id"
            )
        by_id: dict[Hashable, list[int]] = {}
        for i, name in enumerate(names):
            by_id.setdefault(groups[name], []).append(i)
        return tuple(tuple(g) for g in by_id.values())
    if isinstance(groups, str) or any(isinstance(g, str) for g in groups):
        raise ValueError(
            f"{groups=} must be a list of groups, each a list of stream names "
            "(e.g. [['laion', 'coyo'], ['webvid']]), or {name: group id}"
        )
    listed = [list(g) for g in groups]
    flat = [n for g in listed for n in g]
    if any(not g for g in listed) or sorted(flat) != sorted(names):
        raise ValueError(
            f"groups {listed} must put each of the streams {names} in exactly one group"
        )
    return tuple(tuple(sorted(index[n] for n in g)) for g in listed)


GOLDEN = (math.sqrt(5) - 1) / 2
"""The golden ratio's fractional part: ``frac(n * GOLDEN)`` spreads evenly over [0, 1)."""


@functools.lru_cache(maxsize=64)
def _group_start(seed: int, group: int, world_size: int) -> tuple[float, int]:
    """The first ``u`` and the slot offset of a group's draws, from the seed."""
    return uniform(seed, f"group:{group}"), int(uniform(seed, f"slots:{group}") * world_size)


def rank_pick(
    probs: Sequence[float], seed: int, group: int, count: int, rank: int, world_size: int
) -> int:
    """Index (into ``probs``, the weights of a group's streams) of the stream ``rank`` reads at
    the ``count``-th draw of ``group`` (from 0).

    Systematic sampling over the ranks, rotated: rank r takes the point ``(slot + u) /
    world_size`` of [0, 1), with ``slot = (r + count + offset) mod world_size`` (``offset`` from
    the seed) and ``u`` fixed for each window of ``world_size`` draws of the group (a
    golden-ratio sequence from the seed, so it spreads evenly over [0, 1)), and reads the stream
    whose share of the cumulative weights holds that point. At every draw stream i gets
    ``floor`` or ``ceil`` of ``p_i * world_size`` ranks; over each window every rank visits
    every slot once with the same ``u``, so every rank reads each stream equally often (the
    ranks' shares of a stream are read at one pace, apart by less than one window), and over
    the windows the proportions tend to the weights. SDS draws each rank's stream independently
    instead: the same proportions on average, with differences between ranks that grow like the
    square root of the steps.
    """
    if len(probs) == 1:
        return 0
    window, k = divmod(count, world_size)
    first_u, offset = _group_start(seed, group, world_size)
    u = (first_u + window * GOLDEN) % 1.0
    point, acc = ((rank + k + offset) % world_size + u) / world_size, 0.0
    total = float(sum(probs))
    for i, p in enumerate(probs):
        acc += p / total
        if point < acc:
            return i
    return max(i for i, p in enumerate(probs) if p > 0)


def check_mix(
    names: list[str],
    weights: Weights | None,
    strategy: MixStrategy | str,
    stop: StopCriterion | str,
    cycle_length: int | None,
    groups: Groups | None,
    num_accum_rounds: int,
) -> tuple[MixStrategy, StopCriterion, Weights, tuple[tuple[int, ...], ...]]:
    """A Mixer's configuration, checked: (strategy, stop, weights, groups as stream indices).

    Raises:
        ValueError: as :class:`~sdsnodes.Mixer` says, naming the fix.
    """
    try:
        strategy, stop = MixStrategy(strategy), StopCriterion(stop)
    except ValueError as error:
        raise ValueError(
            f"{error}; strategies: {[s.value for s in MixStrategy]}, stops: {[s.value for s in StopCriterion]}"
        ) from None
    if cycle_length is not None and cycle_length < 1:
        raise ValueError(f"{cycle_length=} must be >= 1")
    weights = weights if weights is not None else {n: 1.0 for n in names}
    if callable(weights):
        if strategy is not MixStrategy.WEIGHTED_RANDOM and cycle_length is None:
            raise ValueError(
                "weights that change with the step need cycle_length with an ordered strategy"
            )
        normalize(weights(0), names)
    else:
        normalize(weights, names)
    parsed = parse_groups(groups, names)
    if stop is not StopCriterion.NEVER and any(len(g) > 1 for g in parsed):
        named = [[names[i] for i in g] for g in parsed]
        raise ValueError(
            f"groups {named} put several streams in one group: ranks then read "
            f"different streams and would run out at different steps ({stop.value!r}); "
            "use stop='never' and bound the loop by steps"
        )
    if int(num_accum_rounds) != num_accum_rounds or num_accum_rounds < 1:
        raise ValueError(f"{num_accum_rounds=} must be an int >= 1")
    return strategy, stop, weights, parsed


def weights_at(
    weights: Weights, names: list[str], strategy: MixStrategy, cycle: int | None, step: int
) -> list[float]:
    """The normalized weights at global ``step``: a curriculum's are read at the first step of
    the cycle with an ordered strategy (a cycle keeps its counts), else at ``step``."""
    if callable(weights):
        ordered = cycle and strategy is not MixStrategy.WEIGHTED_RANDOM
        weights = weights(step - step % cycle if ordered else step)
    return normalize(weights, names)
