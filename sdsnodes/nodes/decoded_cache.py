"""DecodedCache: decoded samples kept on disk across epochs, so later epochs skip download and
decode; regenerated every ``refresh_every`` epochs."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchdata.nodes import BaseNode

from sdsnodes.cache.store import Cache
from sdsnodes.nodes import _tensor_files
from sdsnodes.nodes._cache_ref import open_cache, release
from sdsnodes.nodes._remote import disk_full
from sdsnodes.nodes._threads import ThreadMapNode
from sdsnodes.options import CacheOptions, ErrorOptions
from sdsnodes.sample import CACHE_DIR, EPOCH, INDEX, KEY, Sample
from sdsnodes.storage import default_cache_dir

logger = logging.getLogger(__name__)

Step = Any  # a node with ``process(sample) -> sample`` (CachingDownloader, Decoder…) or a callable
_NOT_STORED = (EPOCH, INDEX, CACHE_DIR)  # taken from the row, never from an entry


def step_config(steps: Sequence[Step], seed: int | None = None) -> str:
    """A digest of what the ``steps`` compute: each step's type, codecs (their ``repr``: every
    setting) and seed. Two graphs that decode differently get different digests."""
    parts = [
        (type(s).__name__, repr(getattr(s, "codecs", None)), getattr(s, "seed", None))
        for s in steps
    ]
    return hashlib.sha256(repr((parts, seed)).encode()).hexdigest()[:16]


class DecodedCache(ThreadMapNode):
    """Serve decoded samples from disk; download and decode only what is not there.

    The decoded-sample cache of the Dataset Server (shared/seeds/002), inside the machine-wide
    cache. **Where it sits:** on the index side of a graph — its ``source`` yields index rows
    (an IndexReader, Shuffler or Selector) — and it *replaces* the download and decode nodes,
    which it is given as ``steps``: for each row, an entry of the cache (keyed by ``__key__``,
    the steps' config and the refresh generation ``__epoch__ // refresh_every``) is read back
    if present (no download, no decode); otherwise the steps' ``process`` methods run on the
    row (the same per-sample code streaming and random access run), the files they pinned are
    released, and the decoded sample is written as a safetensors entry. Put an Evictor, a
    Rotator or a Batcher after it, as after a Decoder.

    Entries are files of the cache directory (``cache.cache_dir``) and its ledger, so they share
    its byte budget and eviction policy with the downloads; a miss is computed once machine-wide
    (other processes wait for it). A new generation every ``refresh_every`` epochs means a new
    entry: the codecs draw fresh clip starts and crops (their randomness is seeded by (seed,
    epoch, row)); old generations are left to eviction. A different config (another size,
    frame count, codec setting or seed) reads none of the other config's entries.

    An entry that cannot be used is never returned: it is removed and the sample recomputed,
    counted by reason under ``skipped_entries`` in the state and :meth:`counts`: ``"torn"`` (not
    a readable safetensors file), ``"config"`` (written for another config, key or generation),
    ``"shape"`` (a tensor's dtype or shape differs from what this process computed for that
    column; columns whose shape varies are checked for dtype only). A sample whose values a file
    cannot hold (not tensors, arrays or JSON) is yielded but not stored (``"unstorable"``).

    Args:
        source (BaseNode): index rows, each with ``__key__`` and ``__epoch__``.
        steps (Sequence): what turns a row into a decoded sample, in order: nodes with a
            ``process(sample)`` method (``CachingDownloader``, ``RangeReader``, ``Decoder``;
            their own sources are never iterated) or callables ``sample -> sample``.
        refresh_every (int | None): epochs an entry serves, >= 1 (1 recomputes every epoch);
            None: entries never expire.
        cache (CacheOptions | None): the cache directory, budget and policy (None:
            ``CacheOptions()``); use the downloads' options to share one budget.
        config (str | None): what the entries are keyed by beside the sample; None:
            :func:`step_config` of the steps and ``seed``.
        seed (int | None): mixed into the default ``config``.
        num_threads (int): samples looked up or computed at once (4; 0 inline).
        errors (ErrorOptions | None): a failing step skips the sample (counted by the step's
            reason: ``"download"``, ``"decode"``…) or raises; None: ``ErrorOptions()``.

    State:
        as :class:`~sdsnodes.nodes._threads.ThreadMapNode`, plus ``"skipped_entries":
        {reason: int}``.

    Raises:
        ValueError: no ``steps``, a step without ``process`` that is not callable, or
            ``refresh_every`` < 1.
    """

    SKIPPED_ENTRIES_KEY = "skipped_entries"
    reason = "decoded_cache"  # a failure of the node itself (not of a step)

    def __init__(
        self,
        source: BaseNode,
        steps: Sequence[Step],
        *,
        refresh_every: int | None = None,
        cache: CacheOptions | None = None,
        config: str | None = None,
        seed: int | None = None,
        num_threads: int = 4,
        errors: ErrorOptions | None = None,
    ) -> None:
        if not steps:
            raise ValueError("steps must name what decodes a row, e.g. [Decoder(...)]")
        for step in steps:
            if not hasattr(step, "process") and not callable(step):
                raise ValueError(f"step {step!r} has no process(sample) and is not callable")
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"{refresh_every=} must be >= 1 (epochs), or None to never refresh")
        errors = errors or ErrorOptions()
        super().__init__(source, num_threads, errors.on_error, errors.max_error_rate)
        self.steps = list(steps)
        self.refresh_every = refresh_every
        self.cache = cache or CacheOptions()
        self.config = config or step_config(self.steps, seed)
        self._lock = threading.Lock()
        self._skipped: dict[str, int] = {}
        self._shapes: dict[str, tuple[str, tuple[int, ...] | None]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]  # a copy (StreamingDataset, a worker) gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:
            self._skipped = dict(initial_state.get(self.SKIPPED_ENTRIES_KEY, {}))

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        with self._lock:
            state[self.SKIPPED_ENTRIES_KEY] = dict(self._skipped)
        return state

    def counts(self) -> dict[str, int]:
        """Entries found unusable (or not stored) so far, by reason."""
        with self._lock:
            return dict(self._skipped)

    def generation_start(self, row: Sample) -> int:
        """The first epoch of ``row``'s generation (``__epoch__`` rounded down to a multiple of
        ``refresh_every``; 0 without refresh): the epoch its entry is computed for."""
        if self.refresh_every is None:
            return 0
        return int(row.get(EPOCH) or 0) // self.refresh_every * self.refresh_every

    def url_of(self, row: Sample) -> str:
        """The cache URL of ``row``'s entry: (config, generation, sha256 of ``__key__``)."""
        generation = self.generation_start(row)
        digest = hashlib.sha256(str(row[KEY]).encode()).hexdigest()
        return f"sds-decoded://{self.config}/{generation}/{digest}.safetensors"

    # -- per sample ---------------------------------------------------------------------------

    def classify(self, error: BaseException) -> str:
        return error.reason if isinstance(error, _StepError) else self.reason

    def is_fatal(self, error: BaseException) -> bool:
        """A full disk (writing an entry, or in a step) stops the run, as in the downloads."""
        cause = error.__cause__ if isinstance(error, _StepError) else error
        return cause is not None and disk_full(cause)

    def process(self, row: Sample) -> Sample:
        url = self.url_of(row)
        meta = {"config": self.config, "url": url}
        cache = self._cache()
        computed: dict[str, Sample] = {}

        def fetch(tmp: Any) -> None:
            computed["sample"] = sample = self._compute(row)
            _tensor_files.write(tmp, _stored(sample), meta)

        for _ in range(2):  # a bad entry is removed, then computed
            try:
                path = cache.get(url, fetch)
            except _tensor_files.Unstorable as error:
                self._count("unstorable", row, error)
                return computed["sample"]
            try:
                if "sample" in computed:
                    self._learn(computed["sample"])
                    return computed["sample"]
                entry = self._load(path, meta)
            except _BadEntry as error:
                self._count(error.reason, row, error)
                entry = None
            finally:
                cache.unpin(url)
            if entry is not None:
                out = dict(row)
                out.update(entry)
                return out
            cache.discard(url)
        raise RuntimeError(f"the entry of {row.get(KEY)!r} stayed unusable after recomputing")

    def _compute(self, row: Sample) -> Sample:
        """The steps on ``row`` as in the first epoch of its generation (the codecs' randomness
        follows ``__epoch__``), so an entry's content does not depend on when it was computed."""
        sample = dict(row)
        sample[EPOCH] = self.generation_start(row)
        try:
            for step in self.steps:
                process: Callable[[Sample], Sample] = getattr(step, "process", step)
                try:
                    sample = process(sample)
                except Exception as error:
                    reason = getattr(step, "classify", lambda e: "decode")(error)
                    raise _StepError(reason, error) from error
        finally:
            release(sample)
        sample[EPOCH] = row.get(EPOCH)
        return sample

    def _load(self, path: Any, meta: dict[str, str]) -> Sample:
        try:
            entry, found = _tensor_files.read(path)
        except _tensor_files.BadFile as error:
            raise _BadEntry("torn", str(error)) from error
        if found != meta:
            raise _BadEntry("config", f"{path}: written for {found}, wanted {meta}")
        with self._lock:
            shapes = dict(self._shapes)
        for name, value in entry.items():
            known = shapes.get(name)
            if known is None or not isinstance(value, torch.Tensor):
                continue
            if known[0] != str(value.dtype) or known[1] not in (None, tuple(value.shape)):
                raise _BadEntry("shape", f"{path}: {name} {value.dtype} {list(value.shape)}")
        return entry

    def _learn(self, sample: Sample) -> None:
        """Remember the dtype and shape of each tensor column (shape None where it varies)."""
        with self._lock:
            for name, value in sample.items():
                if isinstance(value, torch.Tensor):
                    seen = self._shapes.setdefault(name, (str(value.dtype), tuple(value.shape)))
                    if seen[1] is not None and seen[1] != tuple(value.shape):
                        self._shapes[name] = (seen[0], None)

    def _count(self, reason: str, row: Sample, error: BaseException) -> None:
        with self._lock:
            self._skipped[reason] = self._skipped.get(reason, 0) + 1
        logger.warning("decoded cache entry of %r not used (%s): %s", row.get(KEY), reason, error)

    def _cache(self) -> Cache:
        cache_dir = str(self.cache.cache_dir or default_cache_dir())
        return open_cache(cache_dir, self.cache.max_bytes, self.cache.ttl, self.cache.policy.value)


def _stored(sample: Sample) -> Sample:
    return {k: v for k, v in sample.items() if k not in _NOT_STORED}


class _BadEntry(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _StepError(RuntimeError):
    """A step's failure, with the reason the step classifies it under."""

    def __init__(self, reason: str, error: BaseException) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
