"""The retry policy of downloads: which errors deserve another attempt, how long to wait, when to
give up.

- **Transient** (retried): HTTP 5xx (but 501, 505), 408 and 429; refused, reset or dropped
  connections; timeouts; a body shorter than its ``Content-Length`` or than the index's size.
  Unknown errors count as transient too: a wrong guess costs a wait, not a sample.
- **Permanent** (raised at once): other 4xx (403, 404…), missing objects, permissions, a full or
  read-only disk, a checksum mismatch, programming errors (``TypeError``…).

Waits grow exponentially with *full jitter* (AWS Architecture Blog, "Exponential Backoff and
Jitter", 2015): before retry ``n`` (from 0) wait ``uniform(0, min(max_sleep_s, backoff_s * 2**n))``
seconds, drawn from a generator of the :class:`Retrier`'s own, seeded by the URL and what is read
of it (never the global RNG: reproducible, yet files or byte ranges retried together wake at
different times). A ``Retry-After`` header on a 429 or 503 answer (seconds
or an HTTP date) replaces the drawn wait: the server's word is honoured, beyond ``max_sleep_s``.

A file gives up after ``retries + 1`` attempts or once ``deadline_s`` seconds have passed since its
first attempt began, whichever comes first: the last wait is cut to end at the deadline, where one
last attempt is made, and none after it (a ``Retry-After`` that ends past it gives up at once).
With the defaults a file rides out any outage shorter than the deadline (30 s): simulated over
200,000 files, none lost to an outage of 28 s, one to an outage of 29.9 s. An attempt already running is
bounded by its own ``timeout`` only, so a :class:`~sdsnodes.errors.DownloadError` comes at most
``deadline_s + timeout`` seconds after the first request.

This is the one retry loop of sdsnodes: :meth:`Retrier.call` (threads) and
:meth:`Retrier.call_async` (coroutines on fsspec's loop) run an attempt under it. Whole-file
downloads (:func:`sdsnodes.storage.fetch`, :func:`~sdsnodes.storage.fetch_soon`) and the block
reads of partial reads (``BlockFile``) all go through them.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import ftplib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sdsnodes._checksum import ChecksumMismatch
from sdsnodes.errors import DownloadError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RETRIES = 30
"""Retries after the first attempt: enough that the deadline binds first (31 requests at most)."""
DEFAULT_BACKOFF_S = 0.5
"""The first wait's upper bound, in seconds; doubled per retry up to ``DEFAULT_MAX_SLEEP_S``."""
DEFAULT_MAX_SLEEP_S = 4.0
"""The longest drawn wait, in seconds (a Retry-After may ask for more)."""
DEFAULT_DEADLINE_S = 30.0
"""Seconds after a file's first attempt when no new attempt starts."""

_PERMANENT_TYPES = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ChecksumMismatch,
    TypeError,
    AttributeError,
    NotImplementedError,
)
_PERMANENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_TRANSIENT_4XX = (408, 429)
_PERMANENT_5XX = (501, 505)
_RETRY_AFTER_STATUSES = (429, 503)
_SECRET = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]*@"  # user:password@
    r"|(?P<key>[?&](?:x-amz-[a-z-]*|x-goog-[a-z-]*|signature|sig|token|key|access_token|"
    r"awsaccesskeyid|googleaccessid|se|sv|sp|st)=)[^&#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the user info of URLs and the values of signing query parameters (presigned
    S3/GCS URLs, tokens) replaced by ``***``: what errors and logs may show."""
    return _SECRET.sub(
        lambda m: f"{m['scheme']}***@" if m["scheme"] else f"{m['key']}***", str(text)
    )


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from (s3fs wraps botocore's), at most 6."""
    out: list[BaseException] = []
    while error is not None and error not in out and len(out) < 6:
        out.append(error)
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return out


def _broken_body(error: BaseException) -> bool:
    """aiohttp's errors of a body cut short: their ``code`` (400) is the parser's, no answer."""
    try:
        from aiohttp import ClientPayloadError
        from aiohttp.http_exceptions import HttpProcessingError
    except ImportError:  # pragma: no cover - fsspec's HTTP needs aiohttp
        return False
    return isinstance(error, (ClientPayloadError, HttpProcessingError))


def status_of(error: BaseException) -> int | None:
    """The HTTP status behind ``error`` (aiohttp, botocore/s3fs, gcsfs, urllib), else None
    (a connection or body error has none, even when raised from a parser error)."""
    for e in _chain(error):
        if _broken_body(e):
            return None
        response = getattr(e, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
        status = getattr(e, "status", None) or getattr(e, "code", None)
        if isinstance(status, int) and 100 <= status <= 599:
            return status
    return None


def _headers_of(error: BaseException) -> Any:
    for e in _chain(error):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders")
            if headers:
                return headers
        headers = getattr(e, "headers", None) or getattr(e, "hdrs", None)
        if headers is not None and hasattr(headers, "get"):
            return headers
    return None


def retry_after_s(error: BaseException, now: float | None = None) -> float | None:
    """Seconds a 429 or 503 answer asks to wait (``Retry-After``: seconds or an HTTP date).

    Args:
        error (BaseException): the error of the failed attempt.
        now (float | None): the current time (seconds since the epoch) for a date; None: now.

    Returns:
        float | None: seconds >= 0, or None when the answer gave none (or another status).
    """
    if status_of(error) not in _RETRY_AFTER_STATUSES:
        return None
    headers = _headers_of(error)
    if headers is None:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    value = str(value).strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_permanent(error: BaseException) -> bool:
    """Whether no retry will fix ``error`` (see the module docstring for the classes)."""
    if isinstance(error, _PERMANENT_TYPES):
        return True
    if isinstance(error, OSError) and error.errno in _PERMANENT_ERRNOS:
        return True
    if isinstance(error, ftplib.error_perm):  # an FTP 5xx reply
        return True
    status = status_of(error)
    if status is None:
        return False
    if 400 <= status < 500:
        return status not in _TRANSIENT_4XX
    return status in _PERMANENT_5XX


def describe(error: BaseException) -> str:
    """A one-line account of ``error`` for messages: its type, HTTP status and text, redacted
    (never a repr: aiohttp's carries the request headers, credentials included)."""
    status = status_of(error)
    text = str(error).splitlines()[0] if str(error) else ""
    if hasattr(error, "message") and isinstance(error.message, str) and status is not None:
        text = error.message  # aiohttp's ClientResponseError: the reason phrase, no URL
    head = type(error).__name__ + (f" {status}" if status is not None else "")
    return redact(f"{head}: {text}" if text else head)[:300]


class Retrier:
    """One file's retry schedule: run the attempts with :meth:`call` or :meth:`call_async`
    (or call :meth:`wait_s` after each failed attempt and :meth:`give_up` when it says None).

    Args:
        url (str): the file (seeds the jitter; named in the error).
        retries (int): retries after the first attempt, >= 0.
        backoff_s (float): upper bound of the first wait, in seconds, > 0.
        deadline_s (float | None): seconds after the first attempt when no new attempt starts;
            None: only ``retries`` bounds them.
        max_sleep_s (float): upper bound of a drawn wait, in seconds.
        clock (Callable[[], float]): seconds, monotonic (``time.monotonic``; a test may
            simulate time with its own).
        what (str): what is read of ``url`` (e.g. ``"bytes 0-1023"``), "" for the whole file:
            seeds the jitter with the URL and leads the cause in the error.

    Raises:
        ValueError: an argument out of range.
    """

    def __init__(
        self,
        url: str,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        deadline_s: float | None = DEFAULT_DEADLINE_S,
        max_sleep_s: float = DEFAULT_MAX_SLEEP_S,
        clock: Callable[[], float] = time.monotonic,
        what: str = "",
    ) -> None:
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"{retries=} must be an int >= 0")
        if not backoff_s > 0 or not max_sleep_s > 0:
            raise ValueError(f"{backoff_s=} and {max_sleep_s=} must be > 0 (seconds)")
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"{deadline_s=} must be None or > 0 (seconds)")
        self.url = url
        self.what = what
        self.retries = retries
        self.backoff_s = backoff_s
        self.deadline_s = deadline_s
        self.max_sleep_s = max_sleep_s
        self.attempts = 0
        self._clock = clock
        self.started = clock()
        seed = f"sdsnodes-retry:{url}" + (f"#{what}" if what else "")
        self._rng = random.Random(seed)  # per file, never the global RNG; str seeds are stable
        self._why_stop = ""

    def elapsed_s(self) -> float:
        """Seconds since the first attempt began."""
        return self._clock() - self.started

    def wait_s(self, error: BaseException) -> float | None:
        """Seconds to wait before the next attempt after the transient ``error`` (the caller
        raises permanent ones, see :func:`is_permanent`), or None to give up."""
        self.attempts += 1
        if self.attempts > self.retries:
            self._why_stop = f"{self.retries} retries"
            return None
        asked = retry_after_s(error)
        if asked is not None:
            wait = asked
        else:
            bound = min(self.max_sleep_s, self.backoff_s * 2 ** (self.attempts - 1))
            wait = self._rng.uniform(0.0, bound)
        if self.deadline_s is not None:
            left = self.deadline_s - self.elapsed_s()
            if asked is not None and asked > left:
                self._why_stop = (
                    f"Retry-After {asked:.0f} s passes the {self.deadline_s:g} s deadline"
                )
                return None
            if left <= 0:
                self._why_stop = f"the {self.deadline_s:g} s deadline"
                return None
            wait = min(wait, left)
        logger.debug(
            "retry %d of %s in %.2f s after %s", self.attempts, redact(self.url), wait,
            describe(error),
        )  # fmt: skip
        return wait

    def give_up(self, last: BaseException | None) -> DownloadError:
        """The error to raise once :meth:`wait_s` said None: the URL, what was read of it,
        attempts, seconds, why it stopped and the last cause (redacted)."""
        cause = describe(last) if last is not None else "no error recorded"
        return DownloadError(
            redact(self.url),
            (f"{self.what}: " if self.what else "")
            + f"failed after {self.attempts} attempts in {self.elapsed_s():.1f} s "
            f"({self._why_stop or 'stopped'}); last error: {cause}",
        )

    def call(self, attempt: Callable[[], T], sleep: Callable[[float], Any] = time.sleep) -> T:
        """``attempt()`` until it returns: a permanent error (:func:`is_permanent`) is raised
        as it is, a transient one waited out (``sleep(wait)``), and once the schedule gives up
        :meth:`give_up`'s :class:`~sdsnodes.errors.DownloadError` is raised from the last.

        Raises:
            DownloadError: transient errors outlived the retries or the deadline.
            Exception: a permanent error of ``attempt``, unchanged.
        """
        while True:
            try:
                return attempt()
            except Exception as error:  # noqa: BLE001 - classified by _next_wait
                wait = self._next_wait(error)
            sleep(wait)

    async def call_async(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """:meth:`call` for a coroutine function: ``await attempt()``, waiting with
        ``asyncio.sleep`` (cancellable) between attempts."""
        while True:
            try:
                return await attempt()
            except Exception as error:  # noqa: BLE001 - classified by _next_wait
                wait = self._next_wait(error)
            await asyncio.sleep(wait)

    def _next_wait(self, error: Exception) -> float:
        """The wait after ``error``; raises it if permanent, or the give-up error."""
        if is_permanent(error):
            raise error
        wait = self.wait_s(error)
        if wait is None:
            raise self.give_up(error) from error
        return wait
