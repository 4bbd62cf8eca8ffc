"""S3 downloads through a presigned GET on one connection pool per event loop.

s3fs sends every GET through aiobotocore: building the request, signing it, botocore's event
hooks and parsing the response. Presigning the same GET with the same client (its credentials,
region, endpoint, addressing style and signature version) and sending it with libcurl
(:mod:`sdsnodes._curl`, where ``pycurl`` imports: the ``s3`` extra installs it) or else aiohttp
costs less (``benchmarks/bench_s3_direct.py`` measures it through the ``CachingDownloader``
against s3fs, on moto). :func:`getter` gives that path for the filesystems it suits; everything
else keeps ``fs._get_file``.

Presigning: the client presigns a bucket's first key; from that URL a :class:`_BucketSigner`
learns the bucket's address and the query signer botocore chose (``HmacV1QueryAuth`` or
``S3SigV4QueryAuth``, from ``botocore.auth``) and signs the next keys with it directly: 0.06
against 0.27 CPU ms per URL on moto, the same URL to the character (tested). It is kept only
when re-signing the first key gives a URL of the same shape.

Suits: an ``s3fs.S3FileSystem`` whose reads need nothing beyond the signature: no requester-pays
(``req_kw``), no ``s3_additional_kwargs`` (SSE-C keys…), not ``version_aware``, no
``client_kwargs`` other than ``endpoint_url`` / ``region_name`` and no ``config_kwargs`` other
than pool size, timeouts, addressing and signature version. Proxies in ``HTTP(S)_PROXY`` /
``NO_PROXY`` and a CA bundle in ``AWS_CA_BUNDLE`` are honoured as botocore honours them (the
proxy of each host looked up once with aiohttp's own ``trust_env`` rule, an SSL context with
that bundle). The session itself does not trust the environment: aiohttp would then look the
proxy and ``~/.netrc`` up in a thread on every request (0.7 of the 1.8 client CPU ms a small
GET cost on moto), and a ``~/.netrc`` entry for the endpoint would add an ``Authorization``
header the presigned URL does not want.

The body is written as S3 stores it, as s3fs writes it: the GET asks for ``Accept-Encoding:
identity`` and nothing is decompressed (an object stored with ``Content-Encoding: gzip`` is
cached gzip-compressed, its listed size).

What differs from s3fs's GET, and how it is kept safe: an answer other than 200 or 404 (a
redirect to another region, a 400 or 403 from a signature the bucket refuses…) is fetched again
through ``fs._get_file`` at once, and a bucket that answered 3xx/400/403 goes through s3fs from
then on, so s3fs's region redirects and typed errors still apply; 404 is ``FileNotFoundError``;
5xx, 408 and 429 raise :class:`S3StatusError` (with the status and headers: the caller's
retrier retries it, honouring ``Retry-After``); a body shorter than its ``Content-Length`` raises
aiohttp's ``ClientPayloadError`` or a :class:`sdsnodes._curl.CurlError` (retried). botocore's
optional response checksum validation (``x-amz-checksum-*``) is not run on this path; give
``checksum_columns`` to check content.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import functools
import os
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from sdsnodes import _curl

_PLAIN_CLIENT = {"endpoint_url", "region_name"}
_PLAIN_CONFIG = {
    "max_pool_connections", "s3", "connect_timeout", "read_timeout", "signature_version",
}  # fmt: skip
_FALLBACK_STATUSES = (301, 302, 307, 308, 400, 403)  # the bucket wants what s3fs does
_EXPIRES_S = 900  # presigned URLs are used at once; 15 min covers a slow queue
_CHUNK = 1 << 16
TRANSPORT = "curl" if _curl.AVAILABLE else "aiohttp"
"""What sends the presigned GETs: ``"curl"`` (libcurl through ``pycurl``: 0.88x aiohttp's
client CPU per small object through the downloader, ``bench_s3_direct``) where it imports, else
``"aiohttp"``."""
DEFAULT_TIMEOUT_S = 300.0
"""Seconds a GET may take when the caller gives no ``timeout`` (aiohttp's own default total):
the session sets no timeout, so no timer is armed per request beside the caller's."""


def time_limit(timeout: float | None) -> float:
    """The seconds the caller must bound a GET of :func:`getter` by: ``timeout``, or
    :data:`DEFAULT_TIMEOUT_S` when it is None (the session itself sets no limit)."""
    return DEFAULT_TIMEOUT_S if timeout is None else timeout


_sessions: dict[tuple[int, int], tuple[Any, Any]] = {}  # (pid, id(loop)) -> (session, loop)
_slow_buckets: set[str] = set()  # buckets that go through s3fs
_proxies: dict[tuple[str, str | None], _Route] = {}  # (scheme, host) -> how its GETs go
_lock = threading.Lock()
_signers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client -> {bucket: signer}


class S3StatusError(OSError):
    """A GET answered with an HTTP error status that may pass (5xx, 408, 429…).

    Attributes:
        status (int): the HTTP status.
        headers (Mapping[str, str]): the answer's headers (``Retry-After``…).
    """

    def __init__(self, url: str, status: int, reason: str, headers: Any) -> None:
        super().__init__(f"GET {url}: HTTP {status} {reason}")
        self.status, self.headers = status, headers


def getter(fs: Any) -> Callable[[str, str], Awaitable[None]] | None:
    """``get(path, dest)``, a coroutine function that writes the object ``path`` of ``fs``
    (as ``fs._get_file`` does) by a presigned GET; None when ``fs`` does not suit (see the
    module docstring)."""
    if type(fs).__module__.split(".")[0] != "s3fs" or not _plain(fs):
        return None

    async def get(path: str, dest: str) -> None:
        bucket, key, _ = fs.split_path(path)
        if bucket in _slow_buckets:
            await fs._get_file(path, dest)
            return
        status = await _get(fs, bucket, key, dest)
        if status is not None:  # the bucket wants s3fs's own request
            if status in _FALLBACK_STATUSES:
                _slow_buckets.add(bucket)
            await fs._get_file(path, dest)

    return get


def _plain(fs: Any) -> bool:
    if getattr(fs, "version_aware", False) or getattr(fs, "req_kw", None):
        return False
    if getattr(fs, "s3_additional_kwargs", None):
        return False
    client_kwargs = getattr(fs, "client_kwargs", None) or {}
    config_kwargs = getattr(fs, "config_kwargs", None) or {}
    return set(client_kwargs) <= _PLAIN_CLIENT and set(config_kwargs) <= _PLAIN_CONFIG


async def _get(fs: Any, bucket: str, key: str, dest: str) -> int | None:
    """GET ``bucket/key`` into ``dest``; the status when s3fs should try instead, else None."""
    url = await _presign(fs, bucket, key)
    name = f"s3://{bucket}/{key}"
    route = _route_for(url)
    if TRANSPORT == "curl":
        answer = await _curl.get(url, dest, route.curl)  # a short body raises CurlError
        return _triage(name, answer.status, answer.reason, answer.headers)
    get = _session().get(url, allow_redirects=False, proxy=route.proxy, proxy_headers=route.headers)
    async with get as response:
        status = _triage(name, response.status, response.reason or "", response.headers)
        if status is not None:
            return status
        with open(dest, "wb") as out:  # a short body raises aiohttp's ClientPayloadError
            async for chunk in response.content.iter_chunked(_CHUNK):
                out.write(chunk)
    return None


def _triage(name: str, status: int, reason: str, headers: Any) -> int | None:
    """None for a 200; the status when s3fs should try instead; else raise the status's error
    (``FileNotFoundError`` for 404, :class:`S3StatusError` for the rest)."""
    if status == 200:
        return None
    if status == 404:
        raise FileNotFoundError(errno.ENOENT, "no such object", name)
    if status in _FALLBACK_STATUSES or (300 <= status < 400):
        return status
    raise S3StatusError(name, status, reason, headers)


async def _presign(fs: Any, bucket: str, key: str) -> str:
    """A presigned GET URL of ``bucket/key``: by the client for the bucket's first key, then by
    the bucket's :class:`_BucketSigner` when one could be learnt from that URL."""
    client = await fs.set_session()
    try:
        signers = _signers.setdefault(client, {})
    except TypeError:  # a client without weak references: no cache
        signers = {}
    signer = signers.get(bucket)  # None: not tried yet; False: the client presigns
    if signer:
        url = await signer.sign(key)
        if url is not None:
            return url
    url = await client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=_EXPIRES_S
    )
    if signer is None:
        signers[bucket] = await _BucketSigner.learn(fs, key, url) or False
    return url


class _BucketSigner:
    """Presigns the GETs of one bucket with the query signer botocore chose for a first URL
    (``HmacV1QueryAuth`` or ``S3SigV4QueryAuth``, same credentials, region and URL shape),
    without what ``generate_presigned_url`` redoes at every call (parameter events, the endpoint
    ruleset, request serialization, choosing the signer). Learnt only when signing the first key
    again gives a URL of the same shape (same address, same parameters, same credential);
    otherwise the client presigns every key."""

    def __init__(self, fs: Any, base: str, make_auth: Callable[[Any], Any]) -> None:
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import ReadOnlyCredentials

        self._fs, self._base, self._make_auth, self._request = fs, base, make_auth, AWSRequest
        key, secret = getattr(fs, "key", None), getattr(fs, "secret", None)  # as s3fs's client
        self._static = (
            ReadOnlyCredentials(key, secret, getattr(fs, "token", None)) if key and secret else None
        )

    @classmethod
    async def learn(cls, fs: Any, key: str, url: str) -> _BucketSigner | None:
        from botocore.auth import HmacV1QueryAuth, S3SigV4QueryAuth

        parts = urlsplit(url)
        query = parse_qs(parts.query)
        quoted = quote(key, safe="/~")
        if not parts.path.endswith("/" + quoted):
            return None
        base = urlunsplit((parts.scheme, parts.netloc, parts.path[: -len(quoted)], "", ""))
        if {"AWSAccessKeyId", "Signature", "Expires"} <= query.keys():
            make = functools.partial(HmacV1QueryAuth, expires=_EXPIRES_S)
        elif query.get("X-Amz-Algorithm") == ["AWS4-HMAC-SHA256"]:
            scope = query.get("X-Amz-Credential", [""])[0].split("/")
            if len(scope) != 5:
                return None
            make = functools.partial(
                S3SigV4QueryAuth, service_name=scope[3], region_name=scope[2], expires=_EXPIRES_S
            )
        else:  # unsigned (anonymous) or a scheme this does not know
            return None
        signer = cls(fs, base, make)
        again = await signer.sign(key)
        if again is None:
            return None
        mine = parse_qs(urlsplit(again).query)
        if again.split("?")[0] != url.split("?")[0] or _signed_by(mine) != _signed_by(query):
            return None
        return signer

    async def sign(self, key: str) -> str | None:
        """The presigned URL of ``key``; None when there are no credentials to sign with."""
        credentials = self._static or await _session_credentials(self._fs)
        if credentials is None:
            return None
        request = self._request(method="GET", url=self._base + quote(key, safe="/~"))
        self._make_auth(credentials).add_auth(request)
        return request.url


def _signed_by(query: dict[str, list[str]]) -> tuple:
    """What a presigned URL's query says of its signing, but the signature, expiry and date:
    the parameters' names, the access key, the session token, the region and service."""
    credential = query.get("X-Amz-Credential", [""])[0].split("/")  # key/date/region/service/…
    names = sorted(query)
    return (
        names,
        query.get("AWSAccessKeyId"),
        query.get("X-Amz-Security-Token"),
        credential[:1] + credential[2:],
    )


async def _session_credentials(fs: Any) -> Any:
    """The credentials of the filesystem's session, frozen (access key, secret, token; refreshed
    as botocore refreshes them): what its client signs with when no ``key`` / ``secret`` were
    given; None when there are none."""
    session = getattr(fs, "session", None)
    if session is None:
        return None
    credentials = await session.get_credentials()
    if credentials is None:
        return None
    frozen = credentials.get_frozen_credentials()
    return await frozen if asyncio.iscoroutine(frozen) else frozen


def _session() -> Any:
    """This process's aiohttp session on the running loop (made at first use)."""
    import aiohttp

    loop = asyncio.get_running_loop()
    key = (os.getpid(), id(loop))
    with _lock:
        session, owner = _sessions.get(key, (None, None))
        if session is None or session.closed or owner is not loop:  # a dead loop's id reused
            bundle = _ca_bundle()
            context = ssl.create_default_context(cafile=bundle) if bundle else True
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, ssl=context)
            # the stored bytes, as s3fs gets them: aiobotocore asks for `identity` and never
            # decompresses (an object stored with Content-Encoding: gzip stays gzip); no timer
            # per request: the caller bounds each GET (DEFAULT_TIMEOUT_S when it gives none)
            unbounded = aiohttp.ClientTimeout(total=None, sock_connect=None)
            session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False,
                headers={"Accept-Encoding": "identity"}, timeout=unbounded,
            )  # fmt: skip
            _sessions[key] = (session, loop)
    return session


class _Route:
    """How the GETs of one scheme and host go: for aiohttp, the proxy and its
    ``Proxy-Authorization`` header; for libcurl, the same as a :class:`sdsnodes._curl.Route`."""

    __slots__ = ("proxy", "headers", "curl")

    def __init__(self, proxy: Any, auth: Any) -> None:
        self.proxy = proxy
        self.headers = None if auth is None else {"Proxy-Authorization": auth.encode()}
        login = None if auth is None else (auth.login, auth.password)
        self.curl = _curl.Route(None if proxy is None else str(proxy), login, _ca_bundle())


def _ca_bundle() -> str | None:
    """The CA certificates that verify TLS endpoints, as botocore finds them (``AWS_CA_BUNDLE``);
    None: the system's."""
    return os.environ.get("AWS_CA_BUNDLE") or None


def _route_for(url: str) -> _Route:
    """The route of ``url``'s scheme and host: the proxy from ``HTTP(S)_PROXY`` / ``NO_PROXY``
    (and ``~/.netrc`` for the proxy's credentials) as aiohttp's ``trust_env`` finds them, and
    the CA bundle of ``AWS_CA_BUNDLE``; looked up once per scheme and host."""
    parts = urlsplit(url)
    where = (parts.scheme, parts.hostname)
    found = _proxies.get(where)
    if found is None:
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        try:
            proxy, auth = get_env_proxy_for_url(URL(url))
        except LookupError:  # no proxy, or NO_PROXY names the host
            proxy, auth = None, None
        found = _proxies[where] = _Route(proxy, auth)
    return found


@atexit.register
def _close_sessions() -> None:
    """Close this process's sessions on their loops (forked children keep their parent's
    unused: they leave through ``os._exit``, and closing them would close the parent's
    sockets)."""
    for (pid, _), (session, loop) in list(_sessions.items()):
        if pid != os.getpid() or session.closed or not loop.is_running():
            continue
        future = asyncio.run_coroutine_threadsafe(session.close(), loop)
        try:
            future.result(timeout=2)
        except Exception:  # noqa: BLE001 - exiting: nothing left to tell
            pass
