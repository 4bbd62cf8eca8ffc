"""The presets' ``rotation=`` and ``decoded_cache=`` option groups, and the nodes they add to a
preset's chain (see :func:`sdsnodes._preset_parts.assemble` and docs/rotation.md)."""

from __future__ import annotations

import dataclasses

from torchdata.nodes import BaseNode

from sdsnodes.nodes.decoded_cache import DecodedCache
from sdsnodes.nodes.prefetcher import Prefetcher
from sdsnodes.nodes.rotator import RotationMedium, Rotator
from sdsnodes.options import CacheOptions, ErrorOptions


def _positive(name: str, value: int | None, least: int, what: str) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or value < least
    ):
        raise ValueError(f"{name}={value!r} must be None or an int >= {least} ({what})")


@dataclasses.dataclass(frozen=True)
class RotationOptions:
    """Yield each decoded sample ``times`` times (a :class:`~sdsnodes.nodes.rotator.Rotator`
    after the Evictor): the epoch grows ``times``-fold for the same downloads and decodes.

    Args:
        times (int): yields per sample, >= 1 (2).
        window (int | None): samples rotated together, >= 2 (8); None: as many as
            ``max_bytes`` holds.
        medium (RotationMedium | str): ``"memory"`` (default) or ``"disk"`` (safetensors files in
            the preset's cache directory, within its budget).
        max_bytes (int | None): bytes of tensors a window may hold, > 0; None: ``window`` alone.

    Raises:
        ValueError: an argument out of range, an unknown ``medium``, or neither ``window`` nor
            ``max_bytes``.
    """

    times: int = 2
    window: int | None = 8
    medium: RotationMedium | str = RotationMedium.MEMORY
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        _positive("RotationOptions: times", self.times, 1, "yields per sample")
        if self.times is None:
            raise ValueError("RotationOptions: times must be an int >= 1")
        _positive("RotationOptions: window", self.window, 2, "samples per window")
        _positive("RotationOptions: max_bytes", self.max_bytes, 1, "bytes per window")
        if self.window is None and self.max_bytes is None:
            raise ValueError("RotationOptions: give window=<samples> or max_bytes=<bytes>")
        try:
            object.__setattr__(self, "medium", RotationMedium(self.medium))
        except ValueError:
            names = [m.value for m in RotationMedium]
            raise ValueError(
                f"RotationOptions: medium={self.medium!r} must be one of {names}"
            ) from None


@dataclasses.dataclass(frozen=True)
class DecodedCacheOptions:
    """Keep decoded samples on disk (a :class:`~sdsnodes.nodes.decoded_cache.DecodedCache` in
    place of the downloads and the Decoder), so later epochs skip download and decode. It looks
    up or computes ``max(num_threads, fetch.max_in_flight)`` samples at a time (a miss downloads
    its files, then decodes them, in one of its threads).

    Args:
        refresh_every (int | None): epochs an entry serves before it is decoded again (fresh
            clip starts and crops), >= 1; None (default): never.
        max_bytes (int | None): the byte budget the cache directory is held to when entries
            are written, > 0; None (default): the preset's ``cache.max_bytes`` (one budget for
            downloads and entries).

    Raises:
        ValueError: an argument out of range.
    """

    refresh_every: int | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        _positive("DecodedCacheOptions: refresh_every", self.refresh_every, 1, "epochs")
        _positive("DecodedCacheOptions: max_bytes", self.max_bytes, 1, "bytes")


def cache_decoded(
    node: BaseNode, index_side: BaseNode, options: DecodedCacheOptions, *, cache: CacheOptions,
    seed: int, num_threads: int, errors: ErrorOptions | None,
) -> DecodedCache:  # fmt: skip
    """A DecodedCache on ``index_side`` whose steps are the nodes from ``index_side`` (excluded)
    up to ``node`` (the download and decode nodes just chained), in order."""
    steps: list[BaseNode] = []
    while node is not index_side:
        steps.append(node)
        node = node.source  # type: ignore[attr-defined]
    if options.max_bytes is not None:
        cache = dataclasses.replace(cache, max_bytes=options.max_bytes)
    return DecodedCache(
        index_side, steps[::-1], refresh_every=options.refresh_every, cache=cache, seed=seed,
        num_threads=num_threads, errors=errors,
    )  # fmt: skip


def rotate(node: BaseNode, options: RotationOptions, *, cache: CacheOptions, seed: int) -> Rotator:
    """``node`` through a Rotator of ``options`` (its disk medium in ``cache``), behind a
    Prefetcher of a window's samples: the next window downloads and decodes while the Rotator
    yields the current one, not only when it asks for it."""
    return Rotator(
        Prefetcher(node, options.window or 8), options.times, medium=options.medium, window=options.window,
        max_bytes=options.max_bytes, cache=cache, seed=seed,
    )  # fmt: skip
