"""Opening containers with PyAV across its versions."""

from __future__ import annotations

from typing import Any

import av

_METADATA_ERRORS: bool | None = None  # whether av.open takes metadata_errors (PyAV < 19)


def av_open(source: Any, **kwargs: Any) -> Any:
    """``av.open(source, **kwargs)``, ignoring undecodable metadata where PyAV lets us choose.

    PyAV up to 18 raises on non-UTF-8 metadata tags unless ``metadata_errors="ignore"``; PyAV 19
    dropped the argument (seen on av 19.0.2) and no longer raises. Try it once, remember.
    """
    global _METADATA_ERRORS
    if _METADATA_ERRORS is not False:
        try:
            container = av.open(source, metadata_errors="ignore", **kwargs)
            _METADATA_ERRORS = True
            return container
        except TypeError as error:
            if "metadata_errors" not in str(error):
                raise
            _METADATA_ERRORS = False
    return av.open(source, **kwargs)


def stream_seconds(container: Any, stream: Any) -> float:
    """A stream's duration in seconds as its header states it (the stream's, else the
    container's; 0.0 when neither says)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / 1_000_000  # AV_TIME_BASE units
