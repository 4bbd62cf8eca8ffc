"""A remote tar as a seekable file for :mod:`tarfile`, read in ranged GETs sized to skip the
members' bodies when they are large (see :mod:`sdsnodes.index.tar`)."""

from __future__ import annotations

import io
from typing import Any

READ_AHEAD = 4 << 20
"""Bytes per ranged GET when reading a remote tar through (members smaller than 1/4 of it)."""
HEADER_READ = 16 << 10
"""Bytes per ranged GET when skipping large members: a header, a PAX record, sidecars."""


class RangedTar(io.RawIOBase):
    """A read-only, seekable file over a remote tar for :mod:`tarfile`, read in ranged GETs of
    ``READ_AHEAD`` bytes while members are small and ``HEADER_READ`` bytes once they are large
    (the caller reports the members' stride with :meth:`saw_member`)."""

    def __init__(self, fs: Any, path: str, size: int, mode: str) -> None:
        super().__init__()
        self._fs, self._path, self.size, self.mode_ = fs, path, size, mode
        self._pos = 0
        self._start, self._buf = 0, b""
        self._stride: float | None = None  # unknown: the first GET reads a header only
        self._members = 0
        self.requests = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def saw_member(self, end: int) -> None:
        """A member ends at byte ``end``: the stride is the mean bytes per member so far."""
        self._members += 1
        self._stride = end / self._members

    def _chunk(self) -> int:
        if self.mode_ == "whole" or self.size <= READ_AHEAD:
            return READ_AHEAD if self.mode_ != "whole" else self.size
        if self.mode_ == "headers":
            return HEADER_READ
        small = self._stride is not None and self._stride * 4 <= READ_AHEAD
        return READ_AHEAD if small else HEADER_READ

    def read(self, n: int | None = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        if end <= self._pos:
            return b""
        if not (self._start <= self._pos and end <= self._start + len(self._buf)):
            stop = min(self.size, max(end, self._pos + self._chunk()))
            self._buf = self._fs.cat_file(self._path, start=self._pos, end=stop)
            self._start = self._pos
            self.requests += 1
            self.bytes_read += len(self._buf)
            if len(self._buf) != stop - self._pos:
                raise OSError(f"asked bytes {self._pos}-{stop - 1} of {self._path!r}, "
                              f"got {len(self._buf)}")  # fmt: skip
        data = self._buf[self._pos - self._start : end - self._start]
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)
