"""A disk cache shared by every process on a machine, within a byte budget.

:class:`Cache` is the API. Inside: ``paths`` (where a URL lives, lock files), ``ledger`` (the
SQLite ledger), ``policy`` (eviction order and budget), ``_transactions`` (the steps of
``Cache.get``), ``_batch`` (``Cache.claim`` / ``finish``), ``_holdings`` (what a Cache object
holds in this process: pins, counters, ledger sections), ``_pool`` (connections per process
and thread, fork safety), ``_recovery`` (repairing what crashed processes left), ``_procs`` (is
a pid alive). Standard library only
(sqlite3; fcntl locks, or filelock where there is no fcntl; psutil where there is no /proc).
"""

from .policy import EvictionPolicy
from .store import Cache

__all__ = ["Cache", "EvictionPolicy"]
