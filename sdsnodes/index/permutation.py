"""Keyed pseudo-random permutations of ``range(n)`` in O(1) memory.

A reader's epoch order is ``row = perm(position)``; computing any entry costs O(1) time and no
memory, so a 1B-row index is shuffled exactly without holding a permutation, every process
computes the same order, and resuming at position p is free.

- :class:`FeistelPermutation`: an exact, global permutation: a balanced Feistel network over the
  smallest even power of two >= n, with cycle-walking to stay inside ``range(n)`` (Black &
  Rogaway, "Ciphers with Arbitrary Finite Domains", CT-RSA 2002). Round function: SplitMix64's
  finalizer (Steele, Lea & Flood, "Fast Splittable Pseudorandom Number Generators", 2014).
- :class:`ChunkPermutation`: chunk-local shuffling for indexes read in chunks: the chunks in a
  random order, and the rows of each window of ``window`` consecutive chunks permuted together —
  reads stay within ``window`` chunks at a time.
- :class:`LanePermutation`: for indexes read by chunks of any sizes (the row groups of a lazy
  remote index, :mod:`sdsnodes.index.lazy`): the chunks in a random order, cut into ``lanes``
  contiguous lanes walked side by side (position ``p`` reads lane ``p % lanes``), the rows of
  each chunk permuted. A reader that takes every ``S``-th position reads ``lanes / gcd(lanes,
  S)`` lanes, each chunk after chunk: its reads stay sequential under any sharding.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

_M64 = (1 << 64) - 1
ROUNDS = 6


def _mix(x: int) -> int:
    """SplitMix64's finalizer: a bijective 64-bit mix."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
    return x ^ (x >> 31)


def _keys(*seed: int) -> list[int]:
    digest = hashlib.blake2b(repr(seed).encode(), digest_size=8 * ROUNDS).digest()
    return [int.from_bytes(digest[8 * r : 8 * r + 8], "little") for r in range(ROUNDS)]


class FeistelPermutation:
    """A bijection of ``range(n)`` determined by ``seed`` (ints), O(1) memory.

    Args:
        n (int): domain size, >= 1.
        *seed (int): the key, e.g. ``(seed, epoch)``.

    Raises:
        ValueError: ``n`` < 1.
    """

    def __init__(self, n: int, *seed: int) -> None:
        if n < 1:
            raise ValueError(f"{n=} must be >= 1")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self._half = bits // 2
        self._mask = (1 << self._half) - 1
        self._keys = _keys(*seed)

    def _encrypt(self, x: int) -> int:
        left, right = x >> self._half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << self._half) | right

    def _decrypt(self, y: int) -> int:
        left, right = y >> self._half, y & self._mask
        for key in reversed(self._keys):
            left, right = right ^ (_mix(left ^ key) & self._mask), left
        return (left << self._half) | right

    def __call__(self, i: int) -> int:
        """The image of ``i`` in ``range(n)``.

        Raises:
            IndexError: ``i`` outside ``range(n)``.
        """
        if not 0 <= i < self.n:
            raise IndexError(f"{i} outside range({self.n})")
        x = self._encrypt(i)
        while x >= self.n:  # cycle-walking: at most 4 rounds on average (domain < 4n)
            x = self._encrypt(x)
        return x

    def inverse(self, j: int) -> int:
        """The ``i`` with ``self(i) == j``."""
        if not 0 <= j < self.n:
            raise IndexError(f"{j} outside range({self.n})")
        x = self._decrypt(j)
        while x >= self.n:
            x = self._decrypt(x)
        return x

    def __len__(self) -> int:
        return self.n


class ChunkPermutation:
    """Chunk-local shuffle: chunk order permuted, rows permuted within windows of chunks.

    Chunk ``c`` holds rows ``[c * chunk_size, (c + 1) * chunk_size)`` (the last one may be
    shorter). Slot ``s`` of the epoch reads chunk ``chunk_order(s)``; positions of window ``w``
    (slots ``[w * window, (w + 1) * window)``) are the rows of those chunks in a random order.

    Args:
        n (int): rows, >= 1.
        chunk_size (int): rows per chunk (e.g. a parquet row group), >= 1.
        window (int): chunks shuffled together, >= 1.
        *seed (int): the key.

    Raises:
        ValueError: an argument < 1.
    """

    def __init__(self, n: int, chunk_size: int, window: int, *seed: int) -> None:
        if min(n, chunk_size, window) < 1:
            raise ValueError(f"{n=}, {chunk_size=} and {window=} must be >= 1")
        self.n, self.chunk_size, self.window = n, chunk_size, window
        self._seed = seed
        self._num_chunks = -(-n // chunk_size)
        self._last_size = n - (self._num_chunks - 1) * chunk_size
        self._chunks = FeistelPermutation(self._num_chunks, *seed, -1)
        self._last_slot = self._chunks.inverse(self._num_chunks - 1)
        self._window_perm: tuple[int, FeistelPermutation] | None = None

    def _size(self, slot: int) -> int:
        return self._last_size if slot == self._last_slot else self.chunk_size

    def _window_start(self, w: int) -> int:
        """Rows before window ``w``."""
        rows = w * self.window * self.chunk_size
        return rows - (
            self.chunk_size - self._last_size if self._last_slot < w * self.window else 0
        )

    def __call__(self, i: int) -> int:
        """The row at position ``i``."""
        if not 0 <= i < self.n:
            raise IndexError(f"{i} outside range({self.n})")
        w = i // (self.window * self.chunk_size)
        while self._window_start(w) > i:
            w -= 1
        while self._window_start(w + 1) <= i:  # windows after the short chunk start earlier
            w += 1
        first = w * self.window
        slots = range(first, min(first + self.window, self._num_chunks))
        rows = sum(self._size(s) for s in slots)
        if self._window_perm is None or self._window_perm[0] != w:
            self._window_perm = (w, FeistelPermutation(rows, *self._seed, w))
        offset = self._window_perm[1](i - self._window_start(w))
        for slot in slots:
            if offset < self._size(slot):
                return self._chunks(slot) * self.chunk_size + offset
            offset -= self._size(slot)
        raise RuntimeError(f"position {i} fell outside window {w}: a bug in ChunkPermutation")

    def __len__(self) -> int:
        return self.n


class LanePermutation:
    """Two-level shuffle over chunks of any sizes, read in ``lanes`` sequential lanes.

    Level 1: the chunks in a random order (a Feistel permutation of the chunk ids) laid end to
    end; that sequence of ``n`` rows is cut into ``lanes`` contiguous lanes of ``n // lanes`` or
    ``n // lanes + 1`` rows. Level 2: position ``p`` reads row ``p // lanes`` of lane
    ``p % lanes``, and the rows of each chunk come in their own random order (a Feistel
    permutation keyed by the chunk). So consecutive positions draw from ``lanes`` different
    chunks in turn, and a reader that takes positions ``s, s + S, s + 2S, …`` (a shard of ``S``)
    reads only the lanes ``≡ s (mod gcd(lanes, S))``: ``lanes / gcd(lanes, S)`` chunks at a time,
    each chunk once, in order — when ``S`` divides ``lanes``, each chunk is read by exactly one
    shard. The order does not depend on ``S`` (elastic resume needs a layout-free order).

    Setup is O(number of chunks) time and memory (the chunk order and its prefix sums: 16 bytes
    a chunk, 160 KB for 10k row groups); a position costs one Feistel evaluation and a bisection.

    Args:
        starts (Sequence[int]): the first row of each chunk, then the row count: ``starts[0] ==
            0``, increasing; chunk ``c`` holds rows ``[starts[c], starts[c + 1])``.
        lanes (int): lanes walked side by side, >= 1 (at most one per row).
        *seed (int): the key.

    Raises:
        ValueError: ``lanes`` < 1, or ``starts`` not increasing from 0.
    """

    def __init__(self, starts: Sequence[int], lanes: int, *seed: int) -> None:
        if lanes < 1:
            raise ValueError(f"{lanes=} must be >= 1")
        if len(starts) < 2 or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError("starts must increase from 0, one entry per chunk plus the row count")
        self.n = int(starts[-1])
        self.lanes = min(lanes, self.n)
        self._starts = list(starts)
        self._seed = seed
        chunks = FeistelPermutation(len(starts) - 1, *seed, -1)
        self._chunks = [chunks(slot) for slot in range(len(starts) - 1)]  # slot -> chunk
        self._slot_starts = [0]  # rows before each slot of the chunk order
        for chunk in self._chunks:
            self._slot_starts.append(self._slot_starts[-1] + starts[chunk + 1] - starts[chunk])
        self._rows: OrderedDict[int, FeistelPermutation] = OrderedDict()  # one per open chunk

    def __call__(self, i: int) -> int:
        """The row at position ``i``."""
        if not 0 <= i < self.n:
            raise IndexError(f"{i} outside range({self.n})")
        lane, step = i % self.lanes, i // self.lanes
        base, extra = divmod(self.n, self.lanes)
        t = lane * base + min(lane, extra) + step  # index into the chunk-ordered sequence
        slot = bisect.bisect_right(self._slot_starts, t) - 1
        chunk = self._chunks[slot]
        return self._starts[chunk] + self._within(chunk)(t - self._slot_starts[slot])

    def chunk_of(self, i: int) -> int:
        """The chunk that position ``i``'s row is in."""
        return bisect.bisect_right(self._starts, self(i)) - 1

    @property
    def chunk_order(self) -> list[int]:
        """The chunks in the order the lanes read them (slot -> chunk)."""
        return list(self._chunks)

    def _within(self, chunk: int) -> FeistelPermutation:
        perm = self._rows.get(chunk)
        if perm is None:
            size = self._starts[chunk + 1] - self._starts[chunk]
            perm = self._rows[chunk] = FeistelPermutation(size, *self._seed, chunk)
            if len(self._rows) > 2 * self.lanes + 2:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end(chunk)
        return perm

    def __len__(self) -> int:
        return self.n
