"""What every codec shares: the :class:`Codec` protocol, :class:`Decoded` (a value plus facts
about it), argument checks, and where a clip (video or audio) starts.

The codec modules (``image``, ``video``, ``audio``, ``text``, ``latent``) import from here, never
from the package (``sdsnodes.codecs``), which only re-exports them: importing any codec module
first works.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Codec(Protocol):
    """Anything called as ``codec(value, rng) -> decoded value``, raising ``DecodeError``."""

    def __call__(self, value: Any, rng: np.random.Generator) -> Any: ...


@dataclasses.dataclass
class Decoded:
    """A decoded value plus facts about it (e.g. ``clip_start`` in seconds), stored by the
    Decoder under ``"<column>.<name>"``."""

    value: Any
    info: dict[str, Any]


class ClipStart(str, enum.Enum):
    """Where a clip (video or audio) starts."""

    RANDOM = "random"
    """Uniformly at random among the starts that fit in the file, drawn from the sample's rng."""
    UNIFORM = "uniform"
    """The clip centred in the file (no randomness): the same clip every epoch."""
    GIVEN = "given"
    """Seconds read from a sample column (``start_column``): the codec needs the sample."""


def check_choice(enum_type: type[enum.Enum], value: Any, name: str) -> Any:
    """``enum_type(value)``, or ``ValueError`` naming the argument and the allowed values."""
    try:
        return enum_type(value)
    except ValueError:
        allowed = [e.value for e in enum_type]
        raise ValueError(f"{name}={value!r} must be one of {allowed}") from None


def given_start(sample: Any, column: str) -> float:
    """The clip start in seconds read from ``sample[column]``.

    Raises:
        ValueError: the sample or column is missing, or the value is not a number >= 0.
    """
    value = None if sample is None else sample.get(column)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"start='given' needs a number of seconds in column {column!r}: {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"clip start {value!r} in column {column!r} must be finite and >= 0")
    return float(value)
