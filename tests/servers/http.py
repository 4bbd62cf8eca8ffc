"""A static HTTP file server with Range support, fault injection and request stats (aiohttp).

Started as a subprocess: ``python -m servers.http --root DIR --port PORT`` with ``tests/`` on
``PYTHONPATH`` and as the working directory. Never ``python tests/servers/http.py``, nor ``-m``
from inside ``tests/servers/``: both put ``tests/servers/`` first on ``sys.path``, where this file
shadows the standard library's ``http`` package.

What it serves, for every path under ``--root``:
  - ``GET`` / ``HEAD`` of a file: ``Content-Length``, ``ETag``, ``Last-Modified``,
    ``Accept-Ranges: bytes``. ``Range: bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` give 206 with
    ``Content-Range``; an unsatisfiable range gives 416 with ``Content-Range: bytes */SIZE``;
    several ranges or another unit are ignored (200, whole file). 404 for a missing path.
  - ``GET`` of a directory (with or without the trailing slash): an HTML index whose links are
    absolute paths, with a trailing slash on subdirectories, the form fsspec's
    ``HTTPFileSystem.ls`` / ``find`` parse.

Control endpoints (not counted in the stats, never faulted):
  - ``POST /__faults__`` with one JSON rule, applied to the next matching requests:
    ``{"fail_next": N, "status": 500}``: answer N requests with that status; with
    ``"retry_after": "2"`` (seconds, or an HTTP date) the answer carries that ``Retry-After``;
    ``{"delay_s": S, "count": N}``: wait S seconds before answering (N omitted: until cleared);
    ``{"reset_next": N, "after_bytes": K}``: send the headers and K body bytes (default: half the
    body), then drop the connection (RST);
    ``{"short_next": N, "after_bytes": K}``: the same, but close the connection cleanly (FIN): a
    body shorter than its ``Content-Length``;
    ``{"rate_bps": R, "count": N}``: a slow body, R bytes per second (N omitted: until cleared);
    ``{"lie_length": D, "count": N}``: announce ``Content-Length`` + D (GET and HEAD alike, N
    omitted: until cleared); D < 0 sends only the announced bytes (a consistent liar: the client
    sees a complete, shorter file), D > 0 sends the real body and closes the connection.
    Every rule also takes ``"path"`` (a substring the URL path must contain) and ``"method"``
    (``"GET"`` by default, ``"HEAD"``, or ``"*"`` for both). Rules of different kinds combine.
  - ``GET /__faults__`` lists the active rules, ``DELETE /__faults__`` clears them.
  - ``GET /__stats__``: ``{"get": n, "head": n, "bytes": n, "injected": n, "paths": {path:
    {"get", "head", "bytes", "ranges", "statuses", "times"}}}``; ``bytes`` counts body bytes
    actually sent, ``injected`` the faults applied, ``ranges`` the ``Range`` header of each GET
    (null when none), ``times`` when each request was recorded (``time.time()``, seconds); a delayed request whose client hung up meanwhile
    is recorded with status 499. ``DELETE /__stats__`` zeroes them.

Files live in ``root`` and survive restarts; fault rules and stats are in memory and do not.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import html
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import ServerProcess

__all__ = ["HTTPServer", "Faults", "make_app"]

_TESTS_DIR = Path(__file__).resolve().parent.parent
_CHUNK = 256 * 1024
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------------------------- the app
@dataclass
class _Rule:
    kind: str  # "fail" | "delay" | "reset" | "short" | "rate" | "lie"
    remaining: int | None  # None: until cleared
    path: str = ""
    method: str = "GET"
    status: int = 500
    delay_s: float = 0.0
    after_bytes: int | None = None
    retry_after: str | None = None
    rate_bps: float = 0.0
    lie_length: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.method in ("*", method) and self.path in path


def _parse_rule(body: dict[str, Any]) -> _Rule:
    common = {"path": str(body.get("path", "")), "method": str(body.get("method", "GET")).upper()}
    if common["method"] not in ("GET", "HEAD", "*"):
        raise ValueError(f"method must be GET, HEAD or *, got {common['method']!r}")
    if "fail_next" in body:
        status = int(body.get("status", 500))
        if not 400 <= status <= 599:
            raise ValueError(f"{status=} must be an HTTP error status")
        after = body.get("retry_after")
        retry_after = None if after is None else str(after)
        return _Rule(
            "fail", int(body["fail_next"]), status=status, retry_after=retry_after, **common
        )
    if "delay_s" in body:
        count = body.get("count")
        return _Rule(
            "delay", None if count is None else int(count), delay_s=float(body["delay_s"]), **common
        )
    for key, kind in (("reset_next", "reset"), ("short_next", "short")):
        if key in body:
            after = body.get("after_bytes")
            return _Rule(
                kind, int(body[key]), after_bytes=None if after is None else int(after), **common
            )
    count = body.get("count")
    remaining = None if count is None else int(count)
    if "rate_bps" in body:
        if not float(body["rate_bps"]) > 0:
            raise ValueError("rate_bps must be > 0 (bytes per second)")
        return _Rule("rate", remaining, rate_bps=float(body["rate_bps"]), **common)
    if "lie_length" in body:
        return _Rule("lie", remaining, lie_length=int(body["lie_length"]), **common)
    raise ValueError(
        "a fault needs one of fail_next, delay_s, reset_next, short_next, rate_bps, lie_length"
    )


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end_inclusive)``, ``"unsatisfiable"``, or None to serve the whole file."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[len("bytes=") :].strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":  # suffix: the last N bytes
            length = int(last)
            if length <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - length), size - 1
        start = int(first)
        end = None if last == "" else int(last)
    except ValueError:
        return None
    if start < 0 or (end is not None and end < start):
        return None  # syntactically invalid: ignored, as RFC 9110 allows
    if start >= size:
        return "unsatisfiable"
    return start, size - 1 if end is None else min(end, size - 1)


class Stats:
    """Request stats of a server (``GET /__stats__``): counts, body bytes sent, statuses."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        self.data.clear()
        self.data.update(get=0, head=0, bytes=0, injected=0, paths={})

    def record(
        self, method: str, path: str, status: int, sent: int, range_header: str | None
    ) -> None:
        entry = self.data["paths"].setdefault(
            path, {"get": 0, "head": 0, "bytes": 0, "ranges": [], "statuses": [], "times": []}
        )
        entry["times"].append(time.time())
        key = method.lower()  # "get", "head"; a proxy also counts "put", "post"…
        entry[key] = entry.get(key, 0) + 1
        self.data[key] = self.data.get(key, 0) + 1
        entry["bytes"] += sent
        self.data["bytes"] += sent
        entry["statuses"].append(status)
        if method == "GET":
            entry["ranges"].append(range_header)

    async def endpoint(self, request: Any) -> Any:
        from aiohttp import web

        if request.method == "DELETE":
            self.reset()
        return web.json_response(self.data)


class Faults:
    """The active fault rules of a server and how they shape one answer (see the module
    docstring); the fault proxy in front of moto (``servers.proxy``) applies the same rules.

    Args:
        stats (Stats): counts each fault applied under ``"injected"``.
        error_body: ``status -> (body, content_type)`` of an injected error answer.
    """

    def __init__(self, stats: Stats, error_body: Any = None) -> None:
        self.stats = stats
        self.rules: list[_Rule] = []
        self.error_body = error_body or (
            lambda status: (f"injected fault {status}\n".encode(), "text/plain")
        )

    async def endpoint(self, request: Any) -> Any:
        from aiohttp import web

        if request.method == "POST":
            try:
                rule = _parse_rule(await request.json())
            except (ValueError, TypeError, json.JSONDecodeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            self.rules.append(rule)
        elif request.method == "DELETE":
            self.rules.clear()
        return web.json_response([asdict(r) for r in self.rules])

    def take(self, kind: str, method: str, path: str) -> _Rule | None:
        for rule in self.rules:
            if rule.kind == kind and rule.matches(method, path):
                if rule.remaining is not None:
                    rule.remaining -= 1
                self.stats.data["injected"] += 1
                return rule
        return None

    async def before(self, request: Any) -> Any:
        """Apply the delay and fail rules: the error answer to send, or None to go on.

        Raises:
            asyncio.CancelledError: the client hung up during a delay (recorded as 499).
        """
        from aiohttp import web

        method, path = request.method, request.path
        range_header = request.headers.get("Range")
        stats = self.stats
        delay = self.take("delay", method, path)
        if delay is not None:
            await asyncio.sleep(delay.delay_s)
            if request.transport is None or request.transport.is_closing():
                stats.record(method, path, 499, 0, range_header)  # the client gave up (nginx)
                raise asyncio.CancelledError
        fail = self.take("fail", method, path)
        if fail is None:
            return None
        body, content_type = self.error_body(fail.status)
        headers = {} if fail.retry_after is None else {"Retry-After": fail.retry_after}
        stats.record(method, path, fail.status, 0 if method == "HEAD" else len(body), range_header)
        return web.Response(
            status=fail.status, body=body, headers=headers, content_type=content_type
        )

    def body_plan(self, method: str, path: str) -> _BodyPlan:
        """How the body of this answer goes wrong (or not): cut, slowed, mis-announced."""
        lie = self.take("lie", method, path)
        plan = _BodyPlan(lie=0 if lie is None else lie.lie_length)
        if method != "GET":
            return plan
        rate = self.take("rate", method, path)
        plan.rate_bps = 0.0 if rate is None else rate.rate_bps
        for kind in ("reset", "short"):
            rule = self.take(kind, method, path)
            if rule is not None:
                plan.cut, plan.after_bytes = kind, rule.after_bytes
                break
        return plan


@dataclass
class _BodyPlan:
    lie: int = 0  # added to the announced Content-Length
    rate_bps: float = 0.0  # 0: full speed
    cut: str | None = None  # "reset" (RST) | "short" (FIN) after ``after_bytes``
    after_bytes: int | None = None

    def announced(self, length: int) -> int:
        return max(0, length + self.lie)

    async def write(self, request: Any, resp: Any, chunks: Any, length: int) -> int:
        """Write the body from the async iterator ``chunks`` of ``length`` bytes as planned;
        the bytes sent. Call :meth:`end` after recording them."""
        limit = min(length, self.announced(length))
        if self.cut is not None:
            limit = min(limit, length // 2 if self.after_bytes is None else self.after_bytes)
        sent = 0
        async for chunk in chunks:
            chunk = chunk[: limit - sent]
            if self.rate_bps > 0:
                piece = max(1, int(self.rate_bps / 20))  # 20 writes per second
                for i in range(0, len(chunk), piece):
                    await resp.write(chunk[i : i + piece])
                    await asyncio.sleep(len(chunk[i : i + piece]) / self.rate_bps)
            elif chunk:
                await resp.write(chunk)
            sent += len(chunk)
            if sent >= limit:
                break
        return sent

    async def end(self, request: Any, resp: Any) -> None:
        """Finish the answer: cleanly, or by dropping the connection as planned."""
        if self.cut is None and self.lie <= 0:
            await resp.write_eof()
            return
        if request.transport is not None:
            if self.cut == "reset":
                request.transport.abort()  # RST before Content-Length bytes arrived
            else:
                request.transport.close()  # FIN: a body shorter than announced
        raise asyncio.CancelledError  # nothing more to send on this connection


async def _file_chunks(target: Path, start: int, length: int):
    with open(target, "rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def make_app(root: Path):
    """The aiohttp application serving ``root`` (see the module docstring)."""
    from aiohttp import web

    root = root.resolve()
    stats = Stats()
    faults = Faults(stats)
    record = stats.record

    def index_page(directory: Path, url_path: str) -> bytes:
        base = "/" + url_path.strip("/")
        base = "" if base == "/" else base
        items = []
        for child in sorted(directory.iterdir()):
            slash = "/" if child.is_dir() else ""
            href = urllib.parse.quote(f"{base}/{child.name}{slash}")
            items.append(f'<li><a href="{href}">{html.escape(child.name)}{slash}</a></li>')
        title = html.escape(base or "/")
        return (
            f"<!DOCTYPE html><html><head><title>Index of {title}</title></head><body>"
            f"<h1>Index of {title}</h1><ul>\n" + "\n".join(items) + "\n</ul></body></html>\n"
        ).encode()

    def sent_size(method: str, body: bytes) -> int:
        return 0 if method == "HEAD" else len(body)  # aiohttp drops the body of a HEAD answer

    async def serve(request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        range_header = request.headers.get("Range")
        early = await faults.before(request)
        if early is not None:
            return early

        target = (root / path.lstrip("/")).resolve()
        if target != root and root not in target.parents or not target.exists():
            body = b"not found\n"
            record(method, path, 404, sent_size(method, body), range_header)
            return web.Response(status=404, body=body)
        if target.is_dir():
            page = index_page(target, path)
            record(method, path, 200, sent_size(method, page), range_header)
            return web.Response(body=page, content_type="text/html", charset="utf-8")

        st = target.stat()
        size = st.st_size
        headers = {
            "ETag": f'"{st.st_mtime_ns:x}-{size:x}"',
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
            "Content-Type": mimetypes.guess_type(target.name)[0] or "application/octet-stream",
        }
        status, start, end = 200, 0, size - 1
        parsed = _parse_range(range_header, size) if method == "GET" else None
        if parsed == "unsatisfiable":
            record(method, path, 416, 0, range_header)
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        if parsed is not None:
            status, (start, end) = 206, parsed
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1
        plan = faults.body_plan(method, path)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = plan.announced(length)
        await resp.prepare(request)
        if method == "HEAD":
            record(method, path, status, 0, range_header)
            await resp.write_eof()
            return resp
        sent = await plan.write(request, resp, _file_chunks(target, start, length), length)
        record(method, path, status, sent, range_header)
        await plan.end(request, resp)
        return resp

    app = web.Application()
    app.router.add_route("*", "/__faults__", faults.endpoint)
    app.router.add_route("*", "/__stats__", stats.endpoint)
    app.router.add_get("/{tail:.*}", serve, allow_head=True)  # add_route("GET") has no HEAD
    return app


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_app(args.root), host=args.host, port=args.port, print=None)


# ---------------------------------------------------------------------------- the test handle
class HTTPServer(ServerProcess):
    """The static file server above on ``http://127.0.0.1:PORT``, serving ``root``.

    Attributes:
        root (Path): the served directory (write test files here); kept across restarts.
        url (str): base URL; ``url_for("a/b.bin")`` is the URL of ``root / "a/b.bin"``.
        storage_options (dict): keyword arguments for ``fsspec.filesystem("http")`` (empty).
    """

    name = "http"
    ready_path = "/__stats__"

    def __init__(self, root: str | os.PathLike[str] | None = None, port: int | None = None):
        super().__init__(port)
        self.root = Path(root) if root is not None else self.tmpdir / "root"
        self.root.mkdir(parents=True, exist_ok=True)

    def _command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "servers.http",
            "--root", str(self.root), "--host", self.host, "--port", str(port),
        ]  # fmt: skip

    def _cwd(self) -> str:
        # ``-m`` puts the working directory first on sys.path: from tests/servers/ this file
        # would shadow the standard library's ``http`` (ImportError at startup)
        return str(_TESTS_DIR)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_TESTS_DIR), env.get("PYTHONPATH", "")) if p
        )
        return env

    @property
    def storage_options(self) -> dict[str, Any]:
        return {}

    def fs(self, **overrides: Any):
        """A fresh ``fsspec`` ``HTTPFileSystem`` (instance cache skipped)."""
        import fsspec

        return fsspec.filesystem(
            "http", **{**self.storage_options, **overrides}, skip_instance_cache=True
        )

    def url_for(self, relpath: str | os.PathLike[str]) -> str:
        """URL of ``root / relpath`` (a path relative to ``root``, or an absolute one inside it)."""
        path = Path(relpath)
        if path.is_absolute():
            path = path.relative_to(self.root)
        return f"{self.url}/{urllib.parse.quote(path.as_posix())}"

    def faults(self, **rule: Any) -> list[dict[str, Any]]:
        """Add one fault rule (see the module docstring); returns the active rules."""
        return self._call("POST", "/__faults__", rule)

    def clear_faults(self) -> None:
        self._call("DELETE", "/__faults__")

    def stats(self, path: str | None = None) -> dict[str, Any]:
        """All request stats, or those of one URL path / full URL (zeros if never requested)."""
        stats = self._call("GET", "/__stats__")
        if path is None:
            return stats
        if path.startswith(self.url):
            path = urllib.parse.unquote(path[len(self.url) :])
        empty = {"get": 0, "head": 0, "bytes": 0, "ranges": [], "statuses": [], "times": []}
        return stats["paths"].get("/" + path.lstrip("/"), empty)

    def reset_stats(self) -> None:
        self._call("DELETE", "/__stats__")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(f"{method} {path} {body}: {exc.read().decode()}") from exc


if __name__ == "__main__":
    main()
