"""mosaicml-streaming's reader for ``bench_peers`` (a module of its own: importing it imports
``streaming``, and DataLoader workers must find the class by name)."""

from __future__ import annotations

from typing import Any

from streaming import StreamingDataset

from benchmarks._peers import crop224


class MosaicImages(StreamingDataset):
    """``StreamingDataset`` decoding in ``__getitem__``, the pattern of streaming's docs."""

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item = super().__getitem__(i)
        return crop224(item["image"]), int(item["index"])
