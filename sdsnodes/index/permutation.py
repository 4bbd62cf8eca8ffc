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
"""

from __future__ import annotations

import hashlib

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
