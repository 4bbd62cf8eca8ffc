"""collate: a list of samples → one batch dict (tensors stacked, everything else listed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchdata.nodes import Batcher

from sdsnodes.codecs import _batch_slots
from sdsnodes.sample import Sample


class SlotBatcher(Batcher):
    """torchdata's ``Batcher`` (same arguments, same state) that lets codecs decode straight
    into the batch.

    Each sample of a batch is pulled with the batch's rows set for this thread
    (:mod:`sdsnodes.codecs._batch_slots`): a codec that runs inline in the pull (``VideoClip``
    under a Decoder with ``num_threads=0``) writes its output into row ``k`` of a tensor
    ``[batch_size, ...]`` (shared memory in a DataLoader worker), and :func:`collate` returns
    that tensor instead of stacking a copy. Use it only where no node between the codecs and
    this batcher holds samples back: a held sample keeps its whole batch's memory alive.

    Args:
        source (BaseNode): the samples to batch.
        batch_size (int): samples per batch.
        drop_last (bool): drop a last, smaller batch (True, as torchdata's ``Batcher``).

    State:
        torchdata's ``Batcher``'s: ``{"source": <source state>}``.
    """

    def next(self) -> list[Any]:
        slots = _batch_slots.BatchSlots(self.batch_size)
        batch: list[Any] = []
        _batch_slots.filling(slots)
        try:
            while len(batch) < self.batch_size:
                slots.position = len(batch)
                try:
                    item = next(self.source)
                except StopIteration:
                    break
                batch.append(item)
        finally:
            _batch_slots.filling(None)
        if len(batch) == self.batch_size or (batch and not self.drop_last):
            return batch
        raise StopIteration()


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Merge samples into a batch.

    For each key: tensors of one shape are stacked (``[B, ...]``, same dtype); ints/floats/bools
    become a 1-D tensor ``[B]`` (int64, float64, bool); anything else (str, None, mixed, tensors of different shapes) is
    kept as a list of length B. Tensors are written once, into the batch (in shared memory when
    called in a DataLoader worker, so passing the batch to the main process copies nothing).

    Args:
        samples (Sequence[dict]): B >= 1 samples with the same keys; reserved keys
            (``__…``, e.g. ``__url__.<column>`` of downloaded files) that only some carry are
            None in the others.

    Returns:
        dict[str, Any]: the batch.

    Raises:
        ValueError: ``samples`` is empty or the samples do not share their (non-reserved) keys.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = list(samples[0].keys())
    if any(sample.keys() != samples[0].keys() for sample in samples[1:]):
        keys = list(dict.fromkeys(k for sample in samples for k in sample))
        differ = [k for k in keys if any(k not in sample for sample in samples)]
        if any(not k.startswith("__") for k in differ):
            raise ValueError(
                f"samples do not share keys: {sorted(samples[0].keys())} vs "
                f"{sorted(next(s for s in samples if s.keys() != samples[0].keys()).keys())}"
            )
        # reserved keys only some samples carry (``__url__.<column>`` of downloaded files,
        # when local and remote streams are mixed): None where absent, as for missing columns
        samples = [{k: sample.get(k) for k in keys} for sample in samples]
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor) and all(
            isinstance(v, torch.Tensor) and v.shape == first.shape and v.dtype == first.dtype
            for v in values
        ):
            batch[key] = _stack(values)  # [B, ...]: the one copy (of views, e.g. image crops)
        elif (
            all(type(v) in (int, float, bool) for v in values)
            and len({type(v) for v in values}) == 1
        ):
            dtype = torch.float64 if type(first) is float else None  # Python floats are doubles
            batch[key] = torch.tensor(values, dtype=dtype)  # [B] int64 / float64 / bool
        else:
            batch[key] = values
    return batch


def _stack(values: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(values)``, contiguous, written once where it ends up: rows a codec decoded
    into under a :class:`SlotBatcher` are returned as the batch they already are.

    In a DataLoader worker the output is allocated in shared memory, as torch's
    ``default_collate`` does, so sending the batch to the main process does not copy it again.
    CPU tensors without gradients are copied by numpy (``np.stack(out=...)``), not through
    torch's intra-op thread pool, which on a busy 2-core machine made ``torch.stack`` of 8 clips
    (uint8 [8, 16, 3, 112, 112]) take about 80 ms instead of about 1 ms.
    """
    gathered = _batch_slots.gather(values)
    if gathered is not None:  # decoded into the batch already (SlotBatcher)
        return gathered
    first = values[0]
    if (
        first.device.type != "cpu"
        or first.layout is not torch.strided
        or first.is_nested
        or any(v.requires_grad for v in values)
    ):
        return torch.stack(values).contiguous()
    out = _batch_slots.allocate((len(values), *first.shape), first.dtype)
    try:
        np.stack([v.numpy() for v in values], out=out.numpy())
    except TypeError:  # a dtype numpy lacks (bfloat16…)
        torch.stack(values, out=out)
    return out
