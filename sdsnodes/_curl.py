"""GETs into files through libcurl's multi interface (``pycurl``), driven by an asyncio loop.

One :class:`_Driver` per process and event loop holds a ``CurlMulti``: its connection pool (kept
alive between GETs where the server allows it), its DNS cache, and the easy handles it reuses.
libcurl tells the driver which sockets to watch (``CURLMOPT_SOCKETFUNCTION``) and when to wake
(``CURLMOPT_TIMERFUNCTION``); the driver hands those to the loop (``add_reader`` /
``add_writer`` / ``call_later``) and calls ``socket_action`` when they fire: the event-driven
pattern of libcurl's ``multi_socket`` API (its ``hiperfifo.c`` example; tornado's
``curl_httpclient`` drives its own loop the same way). HTTP parsing, the body copy and the pool
run in C: through the ``CachingDownloader``, a small object from moto costs 2.11 client CPU ms
against 2.40 when aiohttp sends the presigned GET (``benchmarks/bench_s3_direct.py``, 2,000
objects of ~20 KB, medians of 5).

Everything runs on the loop's thread: libcurl handles are not shared across threads. A forked
child builds its own driver (the key is the pid and the loop) and never touches, nor frees, its
parent's: freeing it would close connections the parent still uses.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

try:
    import pycurl
except ImportError:  # the aiohttp transport is used instead
    pycurl = None  # type: ignore[assignment]

AVAILABLE = pycurl is not None
"""Whether ``pycurl`` imports here (the ``s3`` extra installs it)."""

BUFFER_BYTES = 1 << 16  # libcurl's receive buffer: a 64 KiB body arrives in one write call
_drivers: dict[tuple[int, int], _Driver] = {}  # (pid, id(loop)) -> driver; kept (fork: see above)
_lock = threading.Lock()


class CurlError(OSError):
    """A GET that libcurl could not complete: no connection, a reset, a timeout, a body cut short
    (``CURLE_PARTIAL_FILE``), a TLS failure. Retried as any connection error is.

    Attributes:
        code (int): libcurl's ``CURLcode``.
    """

    def __init__(self, code: int, message: str, url: str) -> None:
        super().__init__(f"GET {url.split('?')[0]}: curl error {code}: {message}")
        self.code = code


@dataclass(eq=False)
class Answer:
    """What a GET answered. The body was written to ``dest`` only when ``status`` is 200.

    Attributes:
        status (int): the HTTP status.
        reason (str): its reason phrase ("" when the status line gave none).
        headers (dict[str, str]): the headers, names in lower case.
    """

    status: int
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """How GETs reach their server: a proxy (None: none, whatever the environment says) with its
    credentials, and the CA certificates that verify TLS servers (None: Python's ``ssl``
    defaults, as aiohttp uses)."""

    proxy: str | None = None
    proxy_login: tuple[str, str] | None = None
    ca_bundle: str | None = None


async def get(url: str, dest: str, route: Route = Route()) -> Answer:
    """GET ``url`` with ``Accept-Encoding: identity`` (nothing decompressed, no redirect followed)
    and write a 200's body to the file ``dest``.

    Returns:
        Answer: the status, reason and headers; the body of another status is dropped.

    Raises:
        CurlError: the GET could not complete (connection, timeout, short body, TLS).
        OSError: writing ``dest`` failed (a full disk…).
    """
    loop = asyncio.get_running_loop()
    key = (os.getpid(), id(loop))
    driver = _drivers.get(key)
    if driver is None or driver.loop is not loop:  # a new loop may reuse a dead one's id
        with _lock:
            driver = _drivers.get(key)
            if driver is None or driver.loop is not loop:
                driver = _drivers[key] = _Driver(loop)
    return await driver.get(url, dest, route)


class _Transfer:
    """One GET in flight: the callbacks libcurl calls with its headers and body."""

    __slots__ = ("curl", "dest", "out", "status", "lines", "error", "future")

    def __init__(self, curl: Any, dest: str, future: asyncio.Future) -> None:
        self.curl, self.dest, self.future = curl, dest, future
        self.out: Any = None
        self.status = 0
        self.lines: list[bytes] = []
        self.error: BaseException | None = None

    def header(self, line: bytes) -> None:
        if line.startswith(b"HTTP/"):  # a status line: a new answer (after a proxy's CONNECT)
            self.lines.clear()
            parts = line.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.lines.append(line)

    def write(self, chunk: bytes) -> int:
        try:
            if self.out is None:
                if self.status != 200:  # getinfo() is refused while the transfer runs
                    return len(chunk)  # an error's body: not the object's
                self.out = open(self.dest, "wb")  # noqa: SIM115 - closed when the GET ends
            return self.out.write(chunk)
        except BaseException as error:  # noqa: BLE001 - raised by get() once the GET ends
            self.error = error
            return 0  # libcurl aborts the transfer (CURLE_WRITE_ERROR)

    def answer(self) -> Answer:
        status = self.curl.getinfo(pycurl.RESPONSE_CODE)
        reason, headers = "", {}
        for line in self.lines:
            text = line.decode("latin-1").rstrip("\r\n")
            if text.startswith("HTTP/"):
                reason = text.split(" ", 2)[2] if text.count(" ") >= 2 else ""
            elif ":" in text:
                name, _, value = text.partition(":")
                headers[name.strip().lower()] = value.strip()
        if status == 200 and self.out is None:  # an empty object: no write call came
            open(self.dest, "wb").close()
        return Answer(status, reason, headers)


class _Driver:
    """A ``CurlMulti`` driven by ``loop`` through libcurl's socket and timer callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._watched: dict[int, int] = {}  # fd -> the pycurl.POLL_* the loop watches it for
        self._timer: asyncio.TimerHandle | None = None
        self._transfers: dict[Any, _Transfer] = {}  # easy handle -> its GET
        self._idle: list[Any] = []  # easy handles to reuse
        verify = ssl.get_default_verify_paths()
        self._default_ca = (verify.cafile, verify.capath)

    async def get(self, url: str, dest: str, route: Route) -> Answer:
        curl = self._idle.pop() if self._idle else self._new_handle()
        transfer = _Transfer(curl, dest, self.loop.create_future())
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.WRITEFUNCTION, transfer.write)
        curl.setopt(pycurl.HEADERFUNCTION, transfer.header)
        self._route(curl, route)
        try:
            self._multi.add_handle(curl)
        except BaseException:
            self._idle.append(curl)
            raise
        self._transfers[curl] = transfer
        try:
            await transfer.future
            if transfer.error is not None:
                raise transfer.error
            return transfer.answer()
        finally:
            if self._transfers.pop(curl, None) is not None:  # cancelled: stop the transfer
                self._multi.remove_handle(curl)
            if transfer.out is not None:
                transfer.out.close()
            curl.setopt(pycurl.WRITEFUNCTION, _drop)  # no reference to the transfer is kept
            curl.setopt(pycurl.HEADERFUNCTION, _drop)
            self._idle.append(curl)

    def _new_handle(self) -> Any:
        curl = pycurl.Curl()
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.HTTPHEADER, ["Accept-Encoding: identity"])
        curl.setopt(pycurl.BUFFERSIZE, BUFFER_BYTES)
        curl.route = None  # the Route its options were last set for
        return curl

    def _route(self, curl: Any, route: Route) -> None:
        if curl.route == route:
            return
        # the route already applied HTTP(S)_PROXY / NO_PROXY: libcurl must not apply them again
        curl.setopt(pycurl.PROXY, route.proxy or "")  # "": no proxy, whatever the environment
        curl.setopt(pycurl.NOPROXY, "")  # "": the proxy for every host, whatever NO_PROXY says
        login = route.proxy_login or ("", "")
        curl.setopt(pycurl.PROXYUSERNAME, login[0])
        curl.setopt(pycurl.PROXYPASSWORD, login[1])
        cafile, capath = (route.ca_bundle, None) if route.ca_bundle else self._default_ca
        if cafile:
            curl.setopt(pycurl.CAINFO, cafile)
        if capath:
            curl.setopt(pycurl.CAPATH, capath)
        curl.route = route

    # libcurl's callbacks: they only tell the loop what to watch; socket_action runs from the loop
    def _on_socket(self, what: int, fd: int, multi: Any, data: Any) -> None:
        loop, old = self.loop, self._watched.get(fd, pycurl.POLL_NONE)
        new = pycurl.POLL_NONE if what == pycurl.POLL_REMOVE else what
        if old & pycurl.POLL_IN and not new & pycurl.POLL_IN:
            loop.remove_reader(fd)
        if old & pycurl.POLL_OUT and not new & pycurl.POLL_OUT:
            loop.remove_writer(fd)
        if new & pycurl.POLL_IN and not old & pycurl.POLL_IN:
            loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        if new & pycurl.POLL_OUT and not old & pycurl.POLL_OUT:
            loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        if new == pycurl.POLL_NONE:
            self._watched.pop(fd, None)
        else:
            self._watched[fd] = new

    def _on_timer(self, ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if ms >= 0:
            self._timer = self.loop.call_later(ms / 1000, self._act, pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, event: int) -> None:
        if fd == pycurl.SOCKET_TIMEOUT:
            self._timer = None
        try:
            while self._multi.socket_action(fd, event)[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
        except pycurl.error as error:  # the multi handle is broken: nothing of it can go on
            for curl in list(self._transfers):
                self._end(curl, (error.args[0], f"multi_socket_action: {error.args[-1]}"))
            return
        while True:
            queued, ended, failed = self._multi.info_read()
            for curl in ended:
                self._end(curl, None)
            for curl, code, message in failed:
                self._end(curl, (code, message))
            if not queued:
                return

    def _end(self, curl: Any, failure: tuple[int, str] | None) -> None:
        self._multi.remove_handle(curl)
        transfer = self._transfers.pop(curl, None)
        if transfer is None or transfer.future.done():
            return
        if failure is not None and transfer.error is None:
            url = curl.getinfo(pycurl.EFFECTIVE_URL) or ""
            transfer.error = CurlError(failure[0], failure[1], url)
        transfer.future.set_result(None)


def _drop(data: bytes) -> None:
    """The callbacks of an idle handle: nothing arrives on it."""
