"""What CachingDownloader and RangeReader share: the columns they fetch, the cache settings, the
validation of both, and how their failures are classified."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.cache import EvictionPolicy
from sdsnodes.errors import OnError
from sdsnodes.nodes._threads import ThreadMapNode
from sdsnodes.storage import default_cache_dir


def disk_full(error: BaseException) -> bool:
    """A full disk or quota, from the file system or from SQLite writing the ledger."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error)


class RemoteColumnsNode(ThreadMapNode):
    """Base of the nodes that fetch remote columns through the shared cache.

    Raises:
        ValueError: ``columns`` is empty, ``max_bytes`` <= 0 or ``policy`` unknown.
    """

    reason = "download"

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
        max_in_flight: int | None = None,
    ) -> None:
        if isinstance(columns, str) or not columns:
            raise ValueError(f"{columns=} must be a non-empty list of column names")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"{max_bytes=} must be > 0 (or None for no budget)")
        try:
            EvictionPolicy(policy)
        except ValueError:
            raise ValueError(
                f"{policy=} must be one of {[p.value for p in EvictionPolicy]}"
            ) from None
        super().__init__(source, num_threads, on_error, max_error_rate, max_in_flight=max_in_flight)
        self.columns = list(columns)
        self.cache_dir = str(cache_dir or default_cache_dir())
        self.max_bytes = max_bytes
        self.storage_options = dict(storage_options or {})
        self.retries = retries
        self.timeout = timeout
        self.policy = policy

    def classify(self, error: BaseException) -> str:
        return "missing" if isinstance(error, FileNotFoundError) else self.reason

    def is_fatal(self, error: BaseException) -> bool:
        """A full disk stops the run at once: skipping every sample would hide it."""
        return disk_full(error)
