"""Checksums of downloaded files: parse an expected digest, hash a file, verify it.

A download may carry ``checksum=(algorithm, digest)``: the file is hashed once it is complete and
before it may enter the cache, and a mismatch is a :class:`ChecksumMismatch` (a permanent
:class:`~sdsnodes.errors.DownloadError` whose ``reason`` is ``"checksum"``: another attempt would
fetch the same wrong bytes, or the index is wrong).

Digests are accepted as object stores give them: hex (``md5sum``, S3's ``ETag`` of a single-part
upload, with or without its quotes) or base64 (GCS's ``md5Hash`` and ``crc32c``, S3's
``ChecksumCRC32C`` / ``ChecksumSHA256``). CRC32C (Castagnoli) comes from ``google-crc32c``
(installed with gcsfs; its C implementation hashes at GB/s), big-endian as GCS and S3 encode it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Any

from sdsnodes.errors import DownloadError

ALGORITHMS = ("md5", "sha256", "crc32c")
"""The algorithms ``checksum=(algorithm, digest)`` accepts."""
_DIGEST_BYTES = {"md5": 16, "sha256": 32, "crc32c": 4}
_READ_BYTES = 2**20


class ChecksumMismatch(DownloadError):
    """A downloaded file's digest differs from the expected one (never retried).

    Attributes:
        reason (str): ``"checksum"``, the skip reason a node counts it under.
        algorithm (str): ``"md5"``, ``"sha256"`` or ``"crc32c"``.
        expected (str), actual (str): the digests, hex.
    """

    reason = "checksum"

    def __init__(self, url: str, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(url, f"checksum: {algorithm} is {actual}, expected {expected}")
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


def parse_checksum(checksum: Any) -> tuple[str, bytes]:
    """The algorithm and raw digest bytes of ``checksum=(algorithm, digest)``.

    Args:
        checksum (tuple[str, str]): algorithm in :data:`ALGORITHMS` (case-insensitive) and the
            expected digest, hex or base64 (surrounding quotes and spaces ignored).

    Returns:
        tuple[str, bytes]: the lower-case algorithm and the digest (16 bytes for md5, 32 for
        sha256, 4 for crc32c).

    Raises:
        ValueError: not a pair, an unknown algorithm, or a digest that is neither the hex nor the
            base64 of that algorithm's digest (e.g. a multipart S3 ETag ``"…-3"``, which is no
            md5 of the object: use another column or no checksum for such objects).
    """
    if not isinstance(checksum, (tuple, list)) or len(checksum) != 2:
        raise ValueError(f"{checksum=} must be a pair (algorithm, digest), e.g. ('md5', 'hex…')")
    algorithm, digest = checksum
    algorithm = str(algorithm).lower()
    if algorithm not in _DIGEST_BYTES:
        raise ValueError(f"checksum algorithm {algorithm!r} must be one of {ALGORITHMS}")
    if isinstance(digest, (bytes, bytearray)):
        digest = bytes(digest).decode("ascii", errors="replace")
    text = str(digest).strip().strip('"').strip()
    size = _DIGEST_BYTES[algorithm]
    if len(text) == 2 * size:
        try:
            return algorithm, bytes.fromhex(text)
        except ValueError:
            pass  # 8 base64 characters of a crc32c look like hex length
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise ValueError(
            f"{algorithm} digest {text!r} must be {2 * size} hex digits or the base64 of "
            f"{size} bytes"
        )
    return algorithm, raw


def file_digest(path: str | os.PathLike, algorithm: str) -> bytes:
    """The raw digest of the file at ``path``.

    Args:
        path (str | os.PathLike): a local file.
        algorithm (str): one of :data:`ALGORITHMS`.

    Returns:
        bytes: the digest (crc32c: 4 bytes, big-endian).

    Raises:
        ValueError: an unknown algorithm.
        OSError: the file cannot be read.
    """
    if algorithm == "crc32c":
        import google_crc32c  # a dependency of gcsfs; imported only when a crc32c is asked

        crc = google_crc32c.Checksum()
        with open(path, "rb") as f:
            while chunk := f.read(_READ_BYTES):
                crc.update(chunk)
        return crc.digest()
    if algorithm not in _DIGEST_BYTES:
        raise ValueError(f"checksum algorithm {algorithm!r} must be one of {ALGORITHMS}")
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            hasher.update(chunk)
    return hasher.digest()


def verify(url: str, path: str | os.PathLike, expected: tuple[str, bytes]) -> None:
    """Raise :class:`ChecksumMismatch` unless the file at ``path`` has the digest ``expected``.

    Args:
        url (str): the file's URL, named in the error.
        path (str | os.PathLike): the downloaded file.
        expected (tuple[str, bytes]): as :func:`parse_checksum` returns it.

    Raises:
        ChecksumMismatch: the digests differ.
    """
    algorithm, digest = expected
    actual = file_digest(path, algorithm)
    if actual != digest:
        raise ChecksumMismatch(url, algorithm, digest.hex(), actual.hex())
