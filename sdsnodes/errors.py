"""Errors raised by sdsnodes and the skip/raise policy shared by every node that meets bad samples."""

from __future__ import annotations

import enum
import logging
import time

logger = logging.getLogger(__name__)


class SdsError(Exception):
    """Base class of every error sdsnodes raises on purpose."""


class DecodeError(SdsError):
    """A file could not be decoded into what its codec promises.

    Args:
        path (str): the file (or URL) that failed.
        cause (str | None): what went wrong, in words; None when ``path`` is a whole message
            (how torch re-raises an error caught in a worker thread or process).
    """

    reason = "decode"
    """The reason a skipped sample is counted under (subclasses name their own)."""

    def __init__(self, path: str, cause: str | None = None) -> None:
        super().__init__(path if cause is None else f"cannot decode {path!r}: {cause}")
        self.path = path
        self.cause = cause


class NotAFile(DecodeError):
    """A path that names no regular file: a FIFO, a directory, a device or a socket (refused
    before any codec opens it, as opening a FIFO blocks forever), or a path holding a NUL byte.

    Counted under the reason ``"not_a_file"``.
    """

    reason = "not_a_file"


class TooLarge(DecodeError):
    """A file declaring more pixels (an image, or a video frame) than its codec's
    ``max_pixels``: refused from its header, before any pixel is decoded (a decompression bomb).

    Counted under the reason ``"too_large"``.
    """

    reason = "too_large"


class DownloadError(SdsError):
    """A remote object could not be copied into the cache (after retries, where they apply)."""

    def __init__(self, url: str, cause: str | None = None) -> None:
        super().__init__(url if cause is None else f"cannot download {url!r}: {cause}")
        self.url = url
        self.cause = cause


class TooManyErrors(SdsError):
    """The fraction of skipped samples passed ``max_error_rate``: a systemic fault, not bad samples."""


class OnError(str, enum.Enum):
    """What a node does with a sample it cannot process."""

    RAISE = "raise"
    """Raise the error at once (the default for random access)."""
    SKIP = "skip"
    """Drop the sample, count it by reason, log it (the default for streaming)."""


class ErrorPolicy:
    """Counts skipped samples by reason and decides whether to raise.

    One instance lives in each node that can meet bad samples. Counts are part of the node's
    state, so they survive a resume.

    Args:
        on_error (OnError | str): ``"skip"`` or ``"raise"``.
        max_error_rate (float): once at least ``min_samples`` samples were seen, raise
            :class:`TooManyErrors` if more than this fraction of them was skipped. 1.0 never raises.
        min_samples (int): samples to see before the rate is judged.
        log_every_s (float): at most one log line per reason every this many seconds.

    State:
        ``{SEEN_KEY: int, SKIPPED_KEY: {reason: int}}``, by which :func:`error_stats` finds it.

    Raises:
        ValueError: ``on_error`` is not a known policy or ``max_error_rate`` is outside [0, 1].
    """

    SEEN_KEY = "seen"
    SKIPPED_KEY = "skipped"

    def __init__(
        self,
        on_error: OnError | str = OnError.SKIP,
        max_error_rate: float = 0.5,
        min_samples: int = 20,
        log_every_s: float = 10.0,
    ) -> None:
        try:
            self.on_error = OnError(on_error)
        except ValueError:
            raise ValueError(f"{on_error=} must be one of {[e.value for e in OnError]}") from None
        if not 0.0 <= max_error_rate <= 1.0:
            raise ValueError(f"{max_error_rate=} must be in [0, 1]")
        self.max_error_rate = max_error_rate
        self.min_samples = min_samples
        self.log_every_s = log_every_s
        self.seen = 0
        self.skipped: dict[str, int] = {}
        self._last_log: dict[str, float] = {}

    def ok(self) -> None:
        """Record a sample that went through."""
        self.seen += 1

    def skip(self, reason: str, error: BaseException, what: str) -> None:
        """Record a bad sample; raise it under ``on_error="raise"`` or when the rate is too high.

        Args:
            reason (str): a short category (``"decode"``, ``"download"``, ``"missing"``).
            error (BaseException): the underlying error.
            what (str): which sample: its ``__key__`` and column.
        """
        if self.on_error is OnError.RAISE:
            raise error
        self.seen += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e9) >= self.log_every_s:
            self._last_log[reason] = now
            logger.warning(
                "skipped %s (%s, %d so far): %s", what, reason, self.skipped[reason], error
            )
        total = sum(self.skipped.values())
        if self.seen >= self.min_samples and total / self.seen > self.max_error_rate:
            raise TooManyErrors(
                f"{total} of {self.seen} samples skipped ({self.skipped}), above "
                f"max_error_rate={self.max_error_rate}; last error on {what}: {error}. "
                "Check credentials, column names and the files; raise max_error_rate to tolerate it."
            ) from error

    def state(self) -> dict:
        return {self.SEEN_KEY: self.seen, self.SKIPPED_KEY: dict(self.skipped)}

    def load(self, state: dict | None) -> None:
        state = state or {}
        self.seen = int(state.get(self.SEEN_KEY, 0))
        self.skipped = {str(k): int(v) for k, v in state.get(self.SKIPPED_KEY, {}).items()}


def error_stats(state: object) -> dict[str, int]:
    """Sum the skip counts found anywhere in a (loader or node) state dict.

    Works on ``StatefulDataLoader.state_dict()`` with any number of workers, and on
    ``torchdata.nodes.Loader.state_dict()``: every :class:`ErrorPolicy` state in the tree.

    Returns:
        dict[str, int]: skipped samples by reason (every node that skips counts its own).
    """
    # imported here: sdsnodes.nodes imports this module (its nodes raise these errors)
    from sdsnodes.nodes.graph import iter_states

    out: dict[str, int] = {}
    for d in iter_states(state):
        skipped = d.get(ErrorPolicy.SKIPPED_KEY)
        if ErrorPolicy.SEEN_KEY in d and isinstance(skipped, dict):
            for reason, count in skipped.items():
                out[reason] = out.get(reason, 0) + int(count)
    return out
