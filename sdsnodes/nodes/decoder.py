"""Decoder: turns paths or bytes in chosen columns into tensors, in a thread pool, in order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from sdsnodes._renamed import renamed_keywords
from sdsnodes.codecs import Codec, Decoded, _batch_slots
from sdsnodes.errors import DecodeError
from sdsnodes.nodes._cache_ref import release
from sdsnodes.nodes._threads import Skipped, ThreadMapNode
from sdsnodes.options import ErrorOptions
from sdsnodes.sample import EPOCH, INDEX, KEY, Sample, range_url_key, url_key


def sample_rng(seed: int, sample: Sample, column_index: int) -> np.random.Generator:
    """The generator a codec gets for one column of one sample: seeded by (seed, epoch, row,
    column), so results do not depend on thread timing and differ from epoch to epoch."""
    return np.random.default_rng(
        [seed, int(sample.get(EPOCH) or 0), int(sample.get(INDEX) or 0), column_index]
    )


class LazyRng:
    """The generator of :func:`sample_rng`, made on first use.

    Seeding a ``numpy.random.Generator`` from a list costs about 30 us, as much as the rest of
    the graph's work on a sample; most codecs (a centre crop, a caption) never draw. Attribute
    access (``rng.random(2)``, ``rng.integers(...)``) builds the same generator
    :func:`sample_rng` would, so the draws are identical.
    """

    __slots__ = ("_args", "_rng")

    def __init__(self, seed: int, sample: Sample, column_index: int) -> None:
        self._args = (seed, sample, column_index)
        self._rng: np.random.Generator | None = None

    def __getattr__(self, name: str) -> Any:
        rng = self._rng
        if rng is None:
            rng = self._rng = sample_rng(*self._args)
        return getattr(rng, name)


class Decoder(ThreadMapNode):
    """Apply a codec per column: ``sample[c] = codecs[c](sample[c], rng)``.

    Codecs run in the order given; see :mod:`sdsnodes.codecs` for the optional codec attributes
    (``source_column``, ``needs_sample``, ``accepts_none``) and :class:`~sdsnodes.codecs.Decoded`
    results, whose facts land under ``"<column>.<name>"``.

    Codecs (``VideoClip``, ``ImageTensor``, ``Text``…) are pure; they run in ``num_threads``
    threads (PyAV and Pillow release the GIL), in order. A sample whose decoding fails (a
    :class:`~sdsnodes.errors.DecodeError`, a missing file, a None value) is skipped and counted
    by reason under ``ErrorOptions(on_error="skip")``, or raised: ``"missing"`` (no such file, a
    None value), ``"not_a_file"`` (a directory, FIFO, device or socket: refused before anything opens it),
    ``"too_large"`` (more pixels than the codec's ``max_pixels``), ``"decode"`` (the rest).
    A :class:`~sdsnodes.errors.DecodeError` names the sample's ``__key__``, the column and the
    URL the user knows (``__url__.<column>``, for a file the downloader cached; the cache path
    follows it), not only the local path the codec read.

    Args:
        source (BaseNode): upstream node (paths must be local: put a CachingDownloader before).
        codecs (Mapping[str, Codec]): column → codec.
        num_threads (int | None): decoding threads; 0 decodes inline; None (default) sizes them
            to the cores of the process that runs the graph: its CPUs over the DataLoader's
            workers, at most 8, inline when one core or less
            (:func:`~sdsnodes.nodes._threads.auto_threads`).
        seed (int): seed of the codecs' randomness (clip starts, random crops).
        errors (ErrorOptions | None): ``on_error`` (``"skip"`` or ``"raise"``) and
            ``max_error_rate``, the skipped fraction past which the node raises; None:
            ``ErrorOptions()`` (skip, 0.5).

    State:
        as :class:`~sdsnodes.nodes._threads.ThreadMapNode`.

    Raises:
        ValueError: ``codecs`` is empty or a value is not callable.
    """

    reason = "decode"

    @renamed_keywords
    def __init__(
        self,
        source: BaseNode,
        codecs: Mapping[str, Codec],
        num_threads: int | None = None,
        seed: int = 0,
        *,
        errors: ErrorOptions | None = None,
    ) -> None:
        if not codecs:
            raise ValueError(
                "codecs must map at least one column to a codec, e.g. {'video': VideoClip(16)}"
            )
        for column, codec in codecs.items():
            if not callable(codec):
                raise ValueError(f"codec for column {column!r} is not callable: {codec!r}")
        errors = errors or ErrorOptions()
        super().__init__(source, num_threads, errors.on_error, errors.max_error_rate)
        self.codecs = dict(codecs)
        self.seed = int(seed)

    def classify(self, error: BaseException) -> str:
        cause: BaseException | None = error
        for _ in range(4):  # the error, what it wraps, and so on
            if isinstance(cause, (FileNotFoundError, _Missing)):
                return "missing"
            cause = None if cause is None else cause.__cause__
        if isinstance(error, DecodeError):
            return error.reason
        return self.reason

    def process(self, sample: Sample) -> Sample:
        out: dict[str, Any] = dict(sample)
        for i, (column, codec) in enumerate(self.codecs.items()):
            source = getattr(codec, "source_column", None) or column
            value = sample.get(source)
            if value is None and not getattr(codec, "accepts_none", False):
                raise _Missing(
                    str(sample.get(url_key(source)) or source), f"column {source!r} is None"
                )
            rng = LazyRng(self.seed, sample, i)
            _batch_slots.decoding(column)  # the batch row it may write into is this column's
            try:
                result = (
                    codec(value, rng, sample=out)
                    if getattr(codec, "needs_sample", False)
                    else codec(value, rng)
                )
            except DecodeError as error:
                raise _named(error, sample, source) from error
            if isinstance(result, Decoded):
                out[column] = result.value
                out.update({f"{column}.{name}": v for name, v in result.info.items()})
            else:
                out[column] = result
        return out

    def on_skip(self, skipped: Skipped) -> None:
        release(skipped.sample)


def _named(error: DecodeError, sample: Sample, column: str) -> DecodeError:
    """``error`` (same class, so the same reason) about the URL of ``column`` the user knows,
    with the sample's key, the column and the local path (the cache file) after the cause."""
    url = sample.get(url_key(column)) or sample.get(range_url_key(column))
    url = url if isinstance(url, str) else None
    cause = str(error) if error.cause is None else error.cause
    detail = f"column {column!r} of {KEY}={sample.get(KEY)!r}"
    if url is not None and error.path != url:
        detail += f", cached as {error.path!r}"
    try:
        named = type(error)(url or error.path, f"{cause} ({detail})")
    except Exception:  # noqa: BLE001 - a codec's own subclass with another signature
        named = DecodeError(url or error.path, f"{cause} ({detail})")
        named.reason = error.reason
    return named


class _Missing(DecodeError):
    """A column the codec needs holds None."""

    reason = "missing"
