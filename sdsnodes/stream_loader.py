"""StreamLoader: a StatefulDataLoader whose workers' batches are joined into coherent batches.

The problem (``shared/seeds/001``): a DataLoader with W workers hands out whole batches of one
worker after another, so batch k and batch k + 1 come from different workers and row r of them
belongs to different streams. Here each worker's
:class:`~sdsnodes.nodes.stream_batcher.StreamBatcher` keeps its own rows (``B // W`` of them),
and this loader takes one batch from each worker in turn — the DataLoader serves its workers in a
fixed round-robin, in order — and concatenates them by row. So row r of every batch comes from
the same worker and continues the same stream until ``is_first``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from sdsnodes.dataset import StreamingDataset
from sdsnodes.nodes.graph import iter_nodes
from sdsnodes.nodes.stream_batcher import END, IS_PAD, ROW, WORKER, PadMode, StreamBatcher
from sdsnodes.sample import KEY


class StreamLoader:
    """Iterate a stream graph (:func:`~sdsnodes.build_stream_graph`) through a
    ``StatefulDataLoader`` with ``num_workers`` workers, yielding full coherent batches.

    Guarantee: batch row r is always read by worker ``w`` with ``w * B // W <= r < (w + 1) * B
    // W``, and from one batch to the next it continues the same stream until ``is_first`` is
    True (``__row__`` int64 [B] names the rows; with ``pad="drop"`` rows may be missing). When a
    worker's streams run out before the others', its rows are padding (``is_pad`` True), or
    absent with ``pad="drop"``; with ``pad="reread"`` a worker re-reads its own streams only, so
    its rows are padding once it is done.

    Args:
        dataset (StreamingDataset): over a graph holding one StreamBatcher.
        num_workers (int): DataLoader workers, <= the batch size; 0 reads in this process.
        pin_memory (bool), multiprocessing_context (str | None): to the StatefulDataLoader.

    State:
        ``{"loader": <StatefulDataLoader state>, "done": [worker ids whose streams ran out]}``;
        taken between batches, it resumes at the next one (``load_state_dict``).

    Raises:
        ValueError: the graph holds no StreamBatcher, ``num_workers`` < 0, or more workers than
            rows.
    """

    LOADER_KEY = "loader"
    DONE_KEY = "done"

    def __init__(
        self,
        dataset: StreamingDataset,
        num_workers: int = 0,
        pin_memory: bool = False,
        multiprocessing_context: str | None = None,
    ) -> None:
        from torchdata.stateful_dataloader import StatefulDataLoader

        if num_workers < 0:
            raise ValueError(f"{num_workers=} must be >= 0")
        batchers = [n for n in iter_nodes(dataset.graph) if isinstance(n, StreamBatcher)]
        if len(batchers) != 1:
            raise ValueError(
                f"StreamLoader needs a graph with one StreamBatcher (build_stream_graph), this "
                f"one has {len(batchers)}"
            )
        self.batcher = batchers[0]
        if num_workers > self.batcher.batch_size:
            raise ValueError(
                f"batch_size={self.batcher.batch_size} rows cannot be shared by {num_workers=}: "
                "each worker keeps its own rows; use num_workers <= batch_size"
            )
        self.batcher.end_marker = num_workers > 0  # set before the workers copy the graph
        self.num_workers = num_workers
        self.loader = StatefulDataLoader(
            dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
            multiprocessing_context=multiprocessing_context if num_workers else None,
        )  # fmt: skip
        self._done: list[int] = []
        self._loaded_done: list[int] | None = None
        self._ends: dict[int, torch.Tensor] = {}  # a worker done → its rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.num_workers == 0:
            yield from self.loader
            return
        done = self._loaded_done if self._loaded_done is not None else []
        self._loaded_done, self._done, self._ends = None, list(done), {}
        batches = iter(self.loader)
        while len(self._done) < self.num_workers:
            parts: dict[int, dict] = {}
            for w in [w for w in range(self.num_workers) if w not in self._done]:
                part = next(batches)
                got = int(part[WORKER][0])
                if got != w:
                    raise RuntimeError(f"expected a batch of worker {w}, got one of worker {got}")
                if part.get(END):
                    self._done.append(w)
                    self._ends[w] = part[ROW]
                else:
                    parts[w] = part
            if parts:
                yield self._join(parts)
        for _ in batches:  # the workers' ends
            pass

    def _join(self, parts: dict[int, dict]) -> dict[str, Any]:
        """The workers' batches by row, the rows of workers done as padding (or none)."""
        template = next(iter(parts.values()))
        if self.batcher.pad is not PadMode.DROP:
            for w in self._done:
                rows = self._ends.get(w)
                if rows is None:  # done before this process saw its end (a resumed run)
                    lo = w * self.batcher.batch_size // self.num_workers
                    hi = (w + 1) * self.batcher.batch_size // self.num_workers
                    rows = torch.arange(lo, hi)
                parts[w] = _padding(template, rows, w)
        ordered = [parts[w] for w in sorted(parts)]
        out: dict[str, Any] = {}
        for key, value in template.items():
            values = [p[key] for p in ordered]
            out[key] = torch.cat(values) if isinstance(value, torch.Tensor) else sum(values, [])
        return out

    def state_dict(self) -> dict[str, Any]:
        """The loader's state between two batches (JSON-compatible)."""
        return {self.LOADER_KEY: self.loader.state_dict(), self.DONE_KEY: list(self._done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the batch after the one the state was taken at, on the next ``iter()``."""
        self.loader.load_state_dict(state[self.LOADER_KEY])
        self._loaded_done = [int(w) for w in state.get(self.DONE_KEY, [])]


def _padding(template: dict[str, Any], rows: torch.Tensor, worker: int) -> dict[str, Any]:
    """Padding rows ``rows`` shaped like ``template``'s rows."""
    n = len(rows)
    out: dict[str, Any] = {}
    for key, value in template.items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.zeros((n, *value.shape[1:]), dtype=value.dtype)
        else:
            out[key] = [None] * n
    out[IS_PAD] = torch.ones(n, dtype=torch.bool)
    out[ROW], out[WORKER] = rows.to(torch.int64), torch.full((n,), worker, dtype=torch.int64)
    out[KEY] = [None] * n
    if "__chunk__" in out:
        out["__chunk__"] = torch.full((n,), -1, dtype=torch.int64)
    return out
