"""A decoded sample as one safetensors file, and back: shared by the DecodedCache (entries that
outlive epochs) and the Rotator's disk medium (samples held for a block).

Tensors (``torch.Tensor``; numpy arrays become tensors and come back as arrays) go in the file's
tensor table; every other value must be JSON-compatible (str, int, float, bool, None, lists and
dicts of them) and goes, as JSON, in the file's string metadata with the caller's own fields.
No pickle: loading a file never runs code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

_VALUES = "sds.values"  # metadata field: the JSON of the non-tensor values
_NUMPY = "sds.numpy"  # metadata field: the names of the tensors that were numpy arrays
_JSON_TYPES = (str, int, float, bool, type(None))


class Unstorable(ValueError):
    """A sample value is neither a tensor, an array nor JSON-compatible."""


class BadFile(ValueError):
    """A file is not a readable sample file (torn, truncated, not safetensors)."""


def _is_json(value: Any) -> bool:
    if isinstance(value, _JSON_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def encode(sample: Mapping[str, Any], meta: Mapping[str, str]) -> bytes:
    """The safetensors bytes of ``sample`` with the caller's string ``meta`` fields.

    Raises:
        Unstorable: a value that is not a tensor, an array or JSON-compatible (names the key).
    """
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    arrays: list[str] = []
    for name, value in sample.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
            arrays.append(name)
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().contiguous().clone()  # owns its storage
        elif _is_json(value):
            values[name] = value
        else:
            raise Unstorable(f"{name!r} holds a {type(value).__name__}, not a tensor or JSON")
    fields = dict(meta)
    fields[_VALUES] = json.dumps(values)
    fields[_NUMPY] = json.dumps(arrays)
    return save(tensors, metadata=fields)


def write(path: str | os.PathLike, sample: Mapping[str, Any], meta: Mapping[str, str]) -> int:
    """Write :func:`encode` of ``sample`` to ``path``; the bytes written.

    Raises:
        Unstorable: as :func:`encode`.
        OSError: the file cannot be written.
    """
    data = encode(sample, meta)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """The sample of a file :func:`write` wrote, and its caller's metadata fields.

    Raises:
        BadFile: the file is torn, truncated or not a sample file.
    """
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        values = json.loads(meta.pop(_VALUES))
        arrays = json.loads(meta.pop(_NUMPY))
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        raise BadFile(f"{os.fspath(path)!r}: {error}") from error
    sample: dict[str, Any] = dict(values)
    for name, tensor in tensors.items():
        sample[name] = tensor.numpy() if name in arrays else tensor
    return sample, meta


def nbytes(sample: Mapping[str, Any]) -> int:
    """Bytes of the tensors and arrays of ``sample`` (what holding it in memory costs, roughly)."""
    total = 0
    for value in sample.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, np.ndarray):
            total += value.nbytes
    return total
