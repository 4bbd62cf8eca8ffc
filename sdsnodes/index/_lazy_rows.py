"""Which rows of a lazy index are read: a filter and a row cap applied by chunks of row groups.

A filter's kept rows must be known before the epoch starts (positions are sharded over
(rank, worker), every rank gets as many batches, a state is ``(epoch, position)``), yet a lazy
index is never read whole. So construction makes one counting pass: each chunk's *filter
columns only* (parquet reads columns on their own: a filter on one float column of a 30-column
index reads that column) are fetched, the filter evaluated, and only the count kept — one int
per chunk, ``threads`` chunks in flight, nothing else held. Chunks keeping no row are dropped.
When a chunk is later read for its rows the same filter selects the same rows, in file order,
so the kept rows are numbered as a converted, filtered index numbers them.

``max_rows`` keeps the first ``max_rows`` kept rows in index order: without a filter from the
footers alone (no read); with one the counting pass stops at the chunk that reaches the cap.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

COUNT_THREADS = 8
"""Chunks whose filter columns are read at once by the counting pass."""


def kept_rows(
    sizes: list[int],
    count: Callable[[int], int] | None,
    max_rows: int | None,
    threads: int = COUNT_THREADS,
) -> list[int]:
    """Rows kept in each chunk, in chunk order; chunks past the cap are absent from the list.

    Args:
        sizes (list[int]): rows of each chunk, as the footers say.
        count (Callable[[int], int] | None): chunk id → rows the filter keeps in it (a read);
            None: no filter, every row is kept.
        max_rows (int | None): keep the first ``max_rows`` kept rows; None: all.
        threads (int): counts running at once, >= 1.

    Returns:
        list[int]: ``kept[c]`` for the chunks up to the one reaching ``max_rows`` (its count
        cut to the cap); zeros stay (the caller drops those chunks).
    """
    cap = max_rows if max_rows is not None else float("inf")
    kept: list[int] = []
    total = 0
    if count is None:
        for size in sizes:
            if total >= cap:
                break
            kept.append(int(min(size, cap - total)))
            total += kept[-1]
        return kept
    with concurrent.futures.ThreadPoolExecutor(threads, "sds-lazy-count") as pool:
        window: list[concurrent.futures.Future[int]] = []
        submitted = 0
        while total < cap and (window or submitted < len(sizes)):
            while submitted < len(sizes) and len(window) < threads:
                window.append(pool.submit(count, submitted))
                submitted += 1
            n = window.pop(0).result()
            kept.append(int(min(n, cap - total)))
            total += kept[-1]
        for future in window:  # past the cap: not needed
            future.cancel()
    return kept


def plan_rows(chunks: list[Any], kept: list[int]) -> tuple[list[tuple[Any, int]], list[int]]:
    """The chunks that keep rows, each with its kept count, and their row starts (0, …, n)."""
    out, starts = [], [0]
    for chunk, rows in zip(chunks, kept):
        if rows > 0:
            out.append((chunk, rows))
            starts.append(starts[-1] + rows)
    return out, starts
