"""The option group of GCS compose fetches (:class:`GcsComposeOptions`), a part of
:class:`~sdsnodes.FetchOptions`."""

from __future__ import annotations

import dataclasses

COMPOSE_MAX_SOURCES = 32
"""GCS composes at most 32 source objects in one request."""


@dataclasses.dataclass(frozen=True)
class GcsComposeOptions:
    """Fetch small ``gs://`` objects by composing them into one temporary object, fetching it
    once and splitting it by their sizes (the trick of Google's Dataflux Dataset for PyTorch).

    When the :class:`~sdsnodes.CachingDownloader` starts a batch of downloads holding at least
    ``min_objects`` objects of one bucket whose size the index gives (``size`` /
    ``<column>_size``) and which are at most ``max_object_bytes``, it composes up to
    ``max_objects`` of them into ``gs://<bucket>/<temp_prefix><unique name>``, GETs that object
    once, writes each part into the cache as its own download would have been (same key, same
    size and checksum checks) and deletes the temporary object, on failure too. Any failure
    (no permission to write, a store without compose, a missing source, a composed size that is
    not the sum of the index's sizes: an object changed) fetches those objects one by one
    instead, logged once per process and counted.

    Off by default: composing **writes** to the bucket (it needs ``storage.objects.create`` and
    ``storage.objects.delete`` there) and each compose is a class A operation on GCS (billed
    like an upload), on top of the GET of the composed object and the delete. A job killed
    between compose and delete leaves its temporary object under ``temp_prefix``; remove
    leftovers with ``gcloud storage rm --recursive gs://<bucket>/<temp_prefix>``.

    Args:
        min_objects (int): fewest objects composed at once, >= 2 (8: below it, one compose + one
            GET costs more client CPU per object than concurrent GETs; see docs/speed.md).
        max_objects (int): most objects composed at once, in [``min_objects``, 32] (32, GCS's
            limit).
        max_object_bytes (int): only objects of at most this many bytes are composed, >= 1
            (1 MiB: larger objects gain nothing over their own GET).
        temp_prefix (str): object-name prefix, in the sources' bucket (compose writes only
            there), of the temporary composed objects (``"sdsnodes-composed-objects/"``);
            each gets a unique name, so workers and ranks never collide.

    Raises:
        ValueError: an argument out of range or of the wrong type.
    """

    min_objects: int = 8
    max_objects: int = COMPOSE_MAX_SOURCES
    max_object_bytes: int = 1 << 20
    temp_prefix: str = "sdsnodes-composed-objects/"

    def __post_init__(self) -> None:
        for name, low in (("min_objects", 2), ("max_object_bytes", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"GcsComposeOptions: {name}={value!r} must be an int >= {low}")
        value = self.max_objects
        if (
            isinstance(value, bool) or not isinstance(value, int)
            or not self.min_objects <= value <= COMPOSE_MAX_SOURCES
        ):  # fmt: skip
            raise ValueError(
                f"GcsComposeOptions: max_objects={value!r} must be an int in "
                f"[min_objects={self.min_objects}, {COMPOSE_MAX_SOURCES}] (GCS's limit)"
            )
        prefix = self.temp_prefix
        if not isinstance(prefix, str) or prefix.startswith(("/", "gs://")) or "\n" in prefix:
            raise ValueError(
                f"GcsComposeOptions: temp_prefix={prefix!r} must be an object-name prefix in the "
                "sources' bucket, e.g. 'sdsnodes-composed-objects/' (compose writes only there)"
            )
