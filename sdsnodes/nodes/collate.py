"""collate: a list of samples → one batch dict (tensors stacked, everything else listed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sdsnodes.sample import Sample


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Merge samples into a batch.

    For each key: tensors of one shape are stacked (``[B, ...]``, same dtype); ints/floats/bools
    become a 1-D tensor ``[B]`` (int64, float64, bool); anything else (str, None, mixed, tensors of different shapes) is
    kept as a list of length B.

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
            stacked = torch.stack(values)  # [B, ...]: the one copy of views (e.g. image crops)
            batch[key] = stacked if stacked.is_contiguous() else stacked.contiguous()
        elif (
            all(type(v) in (int, float, bool) for v in values)
            and len({type(v) for v in values}) == 1
        ):
            dtype = torch.float64 if type(first) is float else None  # Python floats are doubles
            batch[key] = torch.tensor(values, dtype=dtype)  # [B] int64 / float64 / bool
        else:
            batch[key] = values
    return batch
