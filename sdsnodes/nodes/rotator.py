"""Rotator: every decoded sample yielded ``times`` times, interleaved within a shuffled window."""

from __future__ import annotations

import enum
import logging
import os
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from sdsnodes.cache.store import Cache, Claim
from sdsnodes.nodes import _tensor_files
from sdsnodes.nodes._cache_ref import open_cache
from sdsnodes.options import CacheOptions
from sdsnodes.sample import EPOCH, INDEX, Sample
from sdsnodes.storage import default_cache_dir

logger = logging.getLogger(__name__)


class RotationMedium(enum.StrEnum):
    """Where a :class:`Rotator` holds the samples of its window."""

    MEMORY = "memory"
    """In this process's memory (the samples as they came)."""
    DISK = "disk"
    """In safetensors files of the cache directory, within its byte budget; read back per use."""


class Rotator(BaseNode[Sample]):
    """Yield each sample of ``source`` ``times`` times, interleaved with its neighbours.

    For when fetching or decoding a sample costs more than training on it (remote video, heavy
    decode): the rotation of the Dataset Server (shared/seeds/002), made resumable. The source
    is read in *windows* of ``window`` samples (or as many as fit in ``max_bytes``); a window's
    ``n * times`` items are ``times`` rounds, each a random permutation of its n samples
    (seeded by (seed, the first sample's ``__epoch__`` and ``__index__``)), the first of a round
    swapped with the second when it would repeat the last of the previous round. So within a
    window of n >= 2 samples the same sample never comes twice in a row, each sample comes
    exactly ``times`` times per epoch, and the epoch grows ``times``-fold. A last window of one
    sample is merged into the one before it (the source is read two samples ahead); only a
    source of a single sample repeats it back to back.

    Put it after the Decoder and Evictor: what it holds are decoded tensors, not pinned files.
    Items are shallow copies of the held sample (tensors shared: do not modify them in place).

    Args:
        source (BaseNode): decoded samples.
        times (int): yields per sample k, >= 1 (1 passes samples through).
        medium (RotationMedium | str): ``"memory"`` (default) or ``"disk"``: the window's
            samples are written once to safetensors files in the cache directory (pinned, within
            its budget, removed when the window is done) and read back at every use; a sample
            a file cannot hold (values neither tensors, arrays nor JSON) or that finds no room
            in the budget stays in memory (logged).
        window (int | None): samples per window N, >= 2 (8); None: as many as ``max_bytes``
            holds. With both, a window ends at whichever limit comes first.
        max_bytes (int | None): bytes of tensors a window may hold, > 0 (a window has at least
            two samples whatever their size); None: ``window`` alone decides.
        cache (CacheOptions | None): the cache of the disk medium (its ``cache_dir``, budget and
            policy; None: ``CacheOptions()``, ``$SDS_CACHE_DIR`` or ``~/.cache/sdsnodes``).
        seed (int): seed of the permutations.

    State:
        ``{"source": <source state before the window's first sample>, "size": n, "offset":
        items of the window yielded}``: small and JSON-compatible; the window's samples are not
        in it. Resuming re-reads the window's n samples from the source (at most ``window``
        fetches and decodes) and yields exactly the rest of the interrupted run.

    Raises:
        ValueError: ``times`` < 1, an unknown ``medium``, neither ``window`` nor ``max_bytes``,
            ``window`` < 2 or ``max_bytes`` <= 0.
    """

    SOURCE_KEY = "source"
    SIZE_KEY = "size"
    OFFSET_KEY = "offset"

    def __init__(
        self,
        source: BaseNode,
        times: int = 2,
        *,
        medium: RotationMedium | str = RotationMedium.MEMORY,
        window: int | None = 8,
        max_bytes: int | None = None,
        cache: CacheOptions | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"{times=} must be an int >= 1 (yields per sample)")
        try:
            self.medium = RotationMedium(medium)
        except ValueError:
            raise ValueError(
                f"{medium=} must be one of {[m.value for m in RotationMedium]}"
            ) from None
        if window is None and max_bytes is None:
            raise ValueError("give window=<samples per window> or max_bytes=<bytes per window>")
        if window is not None and window < 2:
            raise ValueError(f"{window=} must be >= 2 so that a sample never repeats in a row")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"{max_bytes=} must be > 0 (bytes), or None to use window alone")
        self.source = source
        self.times, self.window, self.max_bytes = times, window, max_bytes
        self.cache = cache or CacheOptions()
        self.seed = int(seed)
        self._held: list[Any] = []  # the window: samples (memory) or their cache URLs (disk)
        self._order: list[int] = []
        self._offset = 0
        self._start: dict[str, Any] | None = None  # source state before the window
        self._pending: list[Sample] = []  # samples read ahead of the window
        self._pending_state: dict[str, Any] | None = None  # source state before _pending[0]
        self._exhausted = False
        self._windows = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._release()
        self._pending, self._exhausted, self._order, self._offset = [], False, [], 0
        state = initial_state or {}
        self.source.reset(state.get(self.SOURCE_KEY))
        if state.get(self.SIZE_KEY):
            self._load(int(state[self.SIZE_KEY]))
            self._offset = int(state[self.OFFSET_KEY])

    def next(self) -> Sample:
        while self._offset >= len(self._order):
            self._release()
            if not self._load(None):
                raise StopIteration
        i = self._order[self._offset]
        self._offset += 1
        return self._get(i)

    def get_state(self) -> dict[str, Any]:
        if self._offset >= len(self._order):  # between windows: the next one starts here
            return {self.SOURCE_KEY: self._state_ahead(), self.SIZE_KEY: 0, self.OFFSET_KEY: 0}
        return {
            self.SOURCE_KEY: self._start,
            self.SIZE_KEY: len(self._held),
            self.OFFSET_KEY: self._offset,
        }

    # -- the window ---------------------------------------------------------------------------

    def _state_ahead(self) -> dict[str, Any]:
        """The source's state before the next sample :meth:`_pull` returns."""
        if self._pending:
            return self._pending_state  # type: ignore[return-value]
        return self.source.state_dict()

    def _pull(self) -> Sample | None:
        """The next sample: read ahead already, else from the source; None at the end."""
        return self._pending.pop(0) if self._pending else self._read()

    def _read(self) -> Sample | None:
        if self._exhausted:
            return None
        try:
            return next(self.source)
        except StopIteration:
            self._exhausted = True
            return None

    def _read_window(self, size: int | None) -> list[Sample]:
        """The next window: ``size`` samples (a resumed window), else as many as fit."""
        self._start = self._state_ahead()
        samples: list[Sample] = []
        held = 0
        while size is None or len(samples) < size:
            if size is None and self.window is not None and len(samples) >= self.window:
                break
            before = self._state_ahead()
            sample = self._pull()
            if sample is None:
                return samples
            cost = _tensor_files.nbytes(sample)
            if size is None and self.max_bytes is not None and len(samples) >= 2:
                if held + cost > self.max_bytes:  # put it back: it starts the next window
                    self._pending.insert(0, sample)
                    self._pending_state = before
                    break
            samples.append(sample)
            held += cost
        if size is None:  # a last window of one sample joins this one
            while len(self._pending) < 2 and not self._exhausted:
                if not self._pending:
                    self._pending_state = self.source.state_dict()
                sample = self._read()
                if sample is not None:
                    self._pending.append(sample)
            if self._exhausted and len(self._pending) == 1:
                samples.append(self._pending.pop())
        return samples

    def _load(self, size: int | None) -> bool:
        samples = self._read_window(size)
        if not samples:
            return False
        self._order = self._permute(samples)
        self._offset = 0
        self._windows += 1
        self._held = self._put(samples) if self.medium is RotationMedium.DISK else samples
        return True

    def _permute(self, samples: list[Sample]) -> list[int]:
        """``times`` rounds of a permutation of the window; no round starts with the sample
        the previous one ended with."""
        first = samples[0]
        rng = np.random.default_rng(
            [self.seed, int(first.get(EPOCH) or 0), int(first.get(INDEX) or 0), len(samples)]
        )
        n, order, last = len(samples), [], -1
        for _ in range(self.times):
            perm = rng.permutation(n).tolist()
            if n > 1 and perm[0] == last:
                perm[0], perm[1] = perm[1], perm[0]
            order += perm
            last = perm[-1]
        return order

    def _get(self, i: int) -> Sample:
        held = self._held[i]
        if isinstance(held, str):
            return _tensor_files.read(self._cache().path_for(held))[0]
        return dict(held)

    # -- the disk medium ------------------------------------------------------------------------

    def _cache(self) -> Cache:
        cache_dir = str(self.cache.cache_dir or default_cache_dir())
        return open_cache(cache_dir, self.cache.max_bytes, self.cache.ttl, self.cache.policy.value)

    def _put(self, samples: list[Sample]) -> list[Sample | str]:
        """Write the window's samples to the cache, pinned, in one claim and one finish of the
        ledger; each one's URL there, or the sample itself when it holds values a file cannot,
        or the budget has no room for it (kept in memory, logged)."""
        held: list[Sample | str] = list(samples)
        files: dict[int, tuple[str, bytes]] = {}
        for i, sample in enumerate(samples):
            url = f"sds-rotation://{os.getpid()}-{id(self):x}-{self._windows}/{i}.safetensors"
            try:
                files[i] = (url, _tensor_files.encode(sample, {}))
            except _tensor_files.Unstorable as error:
                logger.warning("Rotator keeps a sample in memory: %s", error)
        cache = self._cache()
        answers = cache.claim([(url, len(data)) for url, data in files.values()])
        done: list[tuple[Claim, BaseException | None]] = []
        for (i, (url, data)), answer in zip(files.items(), answers):
            if not isinstance(answer, Claim):
                logger.warning("Rotator keeps a sample in memory: no room in %s", cache)
                continue
            error: OSError | None = None
            try:
                answer.tmp.write_bytes(data)
            except OSError as e:  # a full disk: this sample stays in memory
                logger.warning("Rotator keeps a sample in memory: %s", e)
                error = e
            done.append((answer, error))
            held[i] = url
        sizes = cache.finish(done) if done else []
        for (claim, _), size in zip(done, sizes):
            if size is None:  # not in place: the sample stays in memory
                i = held.index(claim.url)
                held[i] = samples[i]
        return held

    def _release(self) -> None:
        """Remove the window's files (disk medium) and forget its samples."""
        urls = [h for h in self._held if isinstance(h, str)]
        if urls:
            self._cache().discard(*urls)  # unpinned and removed in one transaction
        self._held = []
