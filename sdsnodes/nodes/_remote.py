"""What CachingDownloader and RangeReader share: the columns they fetch, the cache settings, the
validation of both, and how their failures are classified."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.cache import EvictionPolicy
from sdsnodes.errors import OnError, SdsError
from sdsnodes.nodes._threads import ThreadMapNode
from sdsnodes.storage import default_cache_dir


def disk_full(error: BaseException) -> bool:
    """A full disk or quota, from the file system or from SQLite writing the ledger."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error)


class RemoteSettings:
    """What the nodes that fetch remote columns through the shared cache share: their
    settings, the validation of them, and how failures are classified."""

    reason = "download"

    def init_remote(
        self,
        columns: Sequence[str],
        *,
        cache_dir: str | None,
        max_bytes: int | None,
        storage_options: dict[str, Any] | None,
        retries: int,
        timeout: float | None,
        policy: str,
    ) -> None:
        """Check and keep the settings.

        Raises:
            ValueError: ``columns`` is empty, ``max_bytes`` <= 0, ``retries`` < 0,
                ``timeout`` <= 0 or ``policy`` unknown.
        """
        if isinstance(columns, str) or not columns:
            raise ValueError(f"{columns=} must be a non-empty list of column names")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"{max_bytes=} must be > 0 (or None for no budget)")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"{retries=} must be an int >= 0")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"{timeout=} must be None or > 0 (seconds)")
        try:
            EvictionPolicy(policy)
        except ValueError:
            raise ValueError(
                f"{policy=} must be one of {[p.value for p in EvictionPolicy]}"
            ) from None
        self.columns = list(columns)
        self.cache_dir = str(cache_dir or default_cache_dir())
        self.max_bytes = max_bytes
        self.storage_options = dict(storage_options or {})
        self.retries = retries
        self.timeout = timeout
        self.policy = policy

    def classify(self, error: BaseException) -> str:
        """``"missing"`` (no such object), the error's own reason (``"checksum"``), or
        ``self.reason``."""
        if isinstance(error, FileNotFoundError):
            return "missing"
        reason = getattr(error, "reason", None) if isinstance(error, SdsError) else None
        return reason if isinstance(reason, str) else self.reason

    def is_fatal(self, error: BaseException) -> bool:
        """A full disk stops the run at once: skipping every sample would hide it."""
        return disk_full(error)


class RemoteColumnsNode(RemoteSettings, ThreadMapNode):
    """Base of the thread-pool nodes that fetch remote columns through the shared cache
    (:class:`RangeReader`).

    Raises:
        ValueError: as :meth:`RemoteSettings.init_remote`.
    """

    def __init__(
        self,
        source: BaseNode,
        columns: Sequence[str],
        *,
        cache_dir: str | None,
        max_bytes: int | None,
        storage_options: dict[str, Any] | None,
        num_threads: int,
        retries: int,
        timeout: float | None,
        policy: str,
        on_error: OnError | str,
        max_error_rate: float,
    ) -> None:
        self.init_remote(
            columns, cache_dir=cache_dir, max_bytes=max_bytes, storage_options=storage_options,
            retries=retries, timeout=timeout, policy=policy,
        )  # fmt: skip
        ThreadMapNode.__init__(self, source, num_threads, on_error, max_error_rate)
