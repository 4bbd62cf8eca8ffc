"""A fault proxy on 127.0.0.1 in front of another HTTP server: moto's S3, so that s3fs (and
botocore's own retries) meet the same faults as the HTTP test server.

Started as a subprocess: ``python -m servers.proxy --upstream URL --port PORT`` (from ``tests/``,
as ``servers.http``). Every request but the control endpoints is forwarded to ``--upstream``
unchanged (method, path, query, headers including ``Host`` and the SigV4 ``Authorization``, body),
and the answer is streamed back, shaped by the same fault rules as ``servers.http`` (``POST
/__faults__``: ``fail_next`` with ``retry_after``, ``delay_s``, ``reset_next``, ``short_next``,
``rate_bps``, ``lie_length``; ``GET/DELETE /__faults__``; ``GET/DELETE /__stats__``). Injected
errors carry an S3 XML body (``InternalError``, ``SlowDown``…) so botocore parses them as S3's.

Stopping the proxy is an outage of the object store that keeps its data (moto, behind it, keeps
running): ``stop()``, then ``start()`` on the same port.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .http import Faults, HTTPServer, Stats

__all__ = ["FaultProxy", "make_proxy_app"]

_HOP_HEADERS = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length",
}  # fmt: skip
_S3_CODES = {
    400: "BadRequest", 403: "AccessDenied", 404: "NoSuchKey", 429: "TooManyRequests",
    500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout",
}  # fmt: skip
_CHUNK = 256 * 1024


def _s3_error(status: int) -> tuple[bytes, str]:
    code = _S3_CODES.get(status, "InternalError")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected fault {status}</Message>"
        "<RequestId>fault-proxy</RequestId></Error>"
    )
    return body.encode(), "application/xml"


def make_proxy_app(upstream: str):
    """The aiohttp application forwarding to ``upstream`` (see the module docstring)."""
    import aiohttp
    from aiohttp import web

    stats = Stats()
    faults = Faults(stats, error_body=_s3_error)
    upstream = upstream.rstrip("/")

    async def open_session(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )

    async def close_session(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        range_header = request.headers.get("Range")
        early = await faults.before(request)
        if early is not None:
            return early
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            method, upstream + request.path_qs, headers=headers, data=body or None,
            allow_redirects=False, skip_auto_headers=("User-Agent", "Content-Type"),
        ) as up:  # fmt: skip
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS}
            plan = faults.body_plan(method, path)
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            length = up.content_length
            if length is not None:
                resp.content_length = plan.announced(length)
            await resp.prepare(request)
            if method == "HEAD" or length is None and up.status == 204:
                stats.record(method, path, up.status, 0, range_header)
                await resp.write_eof()
                return resp
            chunks = up.content.iter_chunked(_CHUNK)
            sent = await plan.write(
                request, resp, chunks, length if length is not None else 1 << 62
            )
            stats.record(method, path, up.status, sent, range_header)
            await plan.end(request, resp)
            return resp

    app = web.Application(client_max_size=1 << 30)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/__faults__", faults.endpoint)
    app.router.add_route("*", "/__stats__", stats.endpoint)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_proxy_app(args.upstream), host=args.host, port=args.port, print=None)


class FaultProxy(HTTPServer):
    """The proxy above on ``http://127.0.0.1:PORT``, forwarding to ``upstream``.

    ``faults()``, ``clear_faults()``, ``stats()`` and ``reset_stats()`` are those of
    :class:`~servers.http.HTTPServer`; ``stats(path)`` takes ``"/bucket/key"`` or ``s3://bucket/key``.

    Args:
        upstream (str): the server behind, e.g. ``S3Server.url``.
        port (int | None): a fixed port; None picks a free one on the first start.
        storage_options (dict | None): the upstream's options (``S3Server.storage_options``);
            :attr:`storage_options` returns them with ``endpoint_url`` pointing here.
    """

    name = "fault-proxy"
    ready_path = "/__stats__"

    def __init__(
        self, upstream: str, port: int | None = None, storage_options: dict | None = None
    ) -> None:
        super().__init__(port=port)
        self.upstream = upstream
        self._upstream_options = dict(storage_options or {})

    def _command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "servers.proxy",
            "--upstream", self.upstream, "--host", self.host, "--port", str(port),
        ]  # fmt: skip

    @property
    def storage_options(self) -> dict[str, Any]:
        return {**self._upstream_options, "endpoint_url": self.url}

    def fs(self, **overrides: Any):
        """A fresh ``s3fs.S3FileSystem`` through the proxy (instance cache skipped)."""
        import s3fs

        return s3fs.S3FileSystem(**{**self.storage_options, **overrides}, skip_instance_cache=True)

    def stats(self, path: str | None = None) -> dict[str, Any]:
        if path is not None and path.startswith("s3://"):
            path = "/" + path[len("s3://") :]
        return super().stats(path)


if __name__ == "__main__":
    main()
