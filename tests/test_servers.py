"""The test storage servers in ``tests/servers/`` behave like the real services they stand for."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from servers import ServerProcess, ServerStartError
from servers.gcs import GCSServer
from servers.http import HTTPServer
from servers.s3 import ForkedS3Server, S3Server

DATA = random.Random(0).randbytes(300_000)  # fixed: pytest-xdist workers collect the same ids
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
RANGES = [(0, 1), (0, 100), (12_345, 54_321), (299_990, 300_000), (299_999, None), (-10, None)]


def _get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with NO_PROXY.open(request, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@dataclass
class Store:
    server: S3Server | GCSServer
    url: str  # "s3://bucket" or "gs://bucket"
    fs: Any


@pytest.fixture(params=["s3", "gcs"])
def store(request: pytest.FixtureRequest) -> Store:
    server = request.getfixturevalue(f"{request.param}_server")
    url = request.getfixturevalue(f"{request.param}_bucket")
    return Store(server, url, server.fs())


# ------------------------------------------------------------------------------ S3 and GCS
def test_object_store_round_trip(store: Store, tmp_path) -> None:
    fs = store.fs
    fs.pipe(f"{store.url}/a/piped.bin", DATA)
    local = tmp_path / "local.bin"
    local.write_bytes(DATA[::-1])
    fs.put_file(str(local), f"{store.url}/a/put.bin")
    fs.get_file(f"{store.url}/a/piped.bin", str(tmp_path / "got.bin"))

    assert (tmp_path / "got.bin").read_bytes() == DATA
    assert fs.cat(f"{store.url}/a/put.bin") == DATA[::-1]
    assert fs.info(f"{store.url}/a/piped.bin")["size"] == len(DATA)
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{store.url}/a/missing.bin")


def test_object_store_ranged_reads(store: Store) -> None:
    store.fs.pipe(f"{store.url}/r.bin", DATA)
    for start, end in RANGES:  # one bucket for all ranges: a bucket costs ~0.2 s on moto
        # keywords: s3fs's cat_file takes version_id as its second positional argument
        got = store.fs.cat_file(f"{store.url}/r.bin", start=start, end=end)
        assert got == DATA[start:end], (start, end)
    with store.fs.open(f"{store.url}/r.bin", block_size=4096) as f:
        f.seek(200_000)
        assert f.read(1000) == DATA[200_000:201_000]


def test_object_store_listing(store: Store) -> None:
    fs = store.fs
    keys = ["top.txt", "d/one.bin", "d/two.bin", "d/sub/three.bin"]
    for key in keys:
        fs.pipe(f"{store.url}/{key}", key.encode())
    bucket = fs._strip_protocol(store.url)

    assert fs.find(store.url) == sorted(f"{bucket}/{k}" for k in keys)
    assert sorted(fs.ls(f"{store.url}/d", detail=False)) == [
        f"{bucket}/d/one.bin",
        f"{bucket}/d/sub",
        f"{bucket}/d/two.bin",
    ]
    assert fs.isdir(f"{store.url}/d/sub") and fs.isfile(f"{store.url}/d/sub/three.bin")


def test_object_store_pause_resume(store: Store) -> None:
    store.fs.pipe(f"{store.url}/kept.bin", b"still here")
    probe = store.server.url + store.server.ready_path
    store.server.pause()
    try:
        with pytest.raises(TimeoutError):  # the kernel accepts, nobody answers
            _get(probe, timeout=0.5)
    finally:
        store.server.resume()
    assert _get(probe, timeout=5)[0] == 200
    assert store.fs.cat(f"{store.url}/kept.bin") == b"still here"


def test_s3_client_times_out_while_paused(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.fs(
        config_kwargs={"read_timeout": 0.3, "connect_timeout": 0.3, "retries": {"max_attempts": 1}}
    )
    fs.retries = 1  # s3fs's own retry loop
    fs.pipe(f"{s3_bucket}/x.bin", b"x")
    s3_server.pause()
    try:
        with pytest.raises(OSError, match="Read timeout"):
            fs.cat_file(f"{s3_bucket}/x.bin")
    finally:
        s3_server.resume()
    assert s3_server.fs().cat_file(f"{s3_bucket}/x.bin") == b"x"


def test_restart_keeps_port_gcs_keeps_data(gcs_server: GCSServer, gcs_bucket: str) -> None:
    fs = gcs_server.fs()
    fs.pipe(f"{gcs_bucket}/x.bin", DATA)
    port, pid = gcs_server.port, gcs_server.pid
    gcs_server.stop()
    with pytest.raises(urllib.error.URLError):  # connection refused
        _get(gcs_server.url + "/storage/v1/b", timeout=2)
    gcs_server.start()
    assert (gcs_server.port, gcs_server.pid != pid) == (port, True)
    assert gcs_server.fs().cat(f"{gcs_bucket}/x.bin") == DATA  # filesystem backend


def test_restart_keeps_port_s3_loses_data(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.fs().pipe(f"{s3_bucket}/x.bin", b"x")
    port = s3_server.port
    s3_server.restart()
    assert s3_server.port == port
    assert s3_server.fs().ls("") == []  # moto keeps everything in memory


def test_forked_s3_server_serves_one_port_from_every_process() -> None:
    import psutil

    def cpu(pid: int) -> float:
        return sum(psutil.Process(pid).cpu_times()[:2])

    blobs = {f"forked/{i}.bin": os.urandom(1000 + i) for i in range(40)}
    with ForkedS3Server(processes=2) as server:
        server.make_bucket("forked")
        server.fs().pipe(blobs)  # uploaded before the split: every process gets a copy
        assert server.pids == [server.pid]
        server.split()
        pids = server.pids
        assert len(pids) == 2
        before = {pid: cpu(pid) for pid in pids}
        for _ in range(30):  # moto closes every connection: each GET is accepted anew
            assert server.fs().cat(list(blobs)) == blobs
            if all(cpu(pid) - before[pid] > 0.05 for pid in pids):
                break
        else:
            pytest.fail(f"not every process served GETs: {[cpu(p) - before[p] for p in pids]}")

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 10  # the child gets SIGKILL when the first process ends
    while alive(pids[1]):
        assert time.monotonic() < deadline, "the forked process outlived the server"
        time.sleep(0.05)


def test_forked_s3_server_needs_a_process() -> None:
    with pytest.raises(ValueError, match="processes must be >= 1"):
        ForkedS3Server(processes=0)


# ------------------------------------------------------------------------------------ HTTP
def test_http_get_info_and_download_once(http_server: HTTPServer, http_dir, tmp_path) -> None:
    (http_dir.path / "x.bin").write_bytes(DATA)
    url = http_dir.url_for("x.bin")
    fs = http_server.fs()

    info = fs.info(url)
    fs.get_file(url, str(tmp_path / "x.bin"))

    assert (tmp_path / "x.bin").read_bytes() == DATA
    assert info["size"] == len(DATA) and info["ETag"] and info["Last-Modified"]
    stats = http_server.stats(url)
    assert (stats["get"], stats["bytes"], stats["ranges"]) == (1, len(DATA), [None])
    with pytest.raises(FileNotFoundError):
        fs.cat_file(http_dir.url_for("missing.bin"))


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_http_ranged_reads(http_server: HTTPServer, http_dir, start: int, end: int | None) -> None:
    (http_dir.path / "r.bin").write_bytes(DATA)
    url = http_dir.url_for("r.bin")
    assert http_server.fs().cat_file(url, start, end) == DATA[start:end]
    assert http_server.stats(url)["bytes"] == len(DATA[start:end])  # only the range travelled


def test_http_random_access_fetches_only_blocks(http_server: HTTPServer, http_dir) -> None:
    (http_dir.path / "r.bin").write_bytes(DATA)
    url = http_dir.url_for("r.bin")
    with http_server.fs().open(url, block_size=4096) as f:
        f.seek(200_000)
        assert f.read(100) == DATA[200_000:200_100]
        f.seek(10)
        assert f.read(10) == DATA[10:20]
    stats = http_server.stats(url)
    assert stats["bytes"] < 10_000 and None not in stats["ranges"]  # of 300_000


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "body"),
    [
        ("bytes=10-19", 206, "bytes 10-19/300000", DATA[10:20]),
        ("bytes=299990-", 206, "bytes 299990-299999/300000", DATA[299_990:]),
        ("bytes=-5", 206, "bytes 299995-299999/300000", DATA[-5:]),
        ("bytes=299999-400000", 206, "bytes 299999-299999/300000", DATA[-1:]),
        ("bytes=300000-", 416, "bytes */300000", None),
        ("bytes=-0", 416, "bytes */300000", None),
        ("bytes=0-1,5-6", 200, None, DATA),  # several ranges: ignored
        ("bytes=9-3", 200, None, DATA),  # invalid: ignored
    ],
    ids=lambda value: f"{len(value)}B" if isinstance(value, bytes) else None,
)
def test_http_range_semantics(http_dir, range_header, status, content_range, body) -> None:
    (http_dir.path / "r.bin").write_bytes(DATA)
    got_status, headers, got_body = _get(
        http_dir.url_for("r.bin"), timeout=5, headers={"Range": range_header}
    )
    assert (got_status, headers.get("Content-Range")) == (status, content_range)
    if body is not None:
        assert got_body == body and int(headers["Content-Length"]) == len(body)


def test_http_listing(http_server: HTTPServer, http_dir) -> None:
    for rel in ["top.txt", "d/one.bin", "d/sub/two bin.txt"]:
        (http_dir.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (http_dir.path / rel).write_bytes(rel.encode())
    fs = http_server.fs()
    assert fs.ls(http_dir.url, detail=False) == [
        http_dir.url_for("d/"),
        http_dir.url_for("top.txt"),
    ]
    found = fs.find(http_dir.url)
    assert found == [
        http_dir.url_for("d/one.bin"),
        http_dir.url_for("d/sub/two bin.txt"),
        http_dir.url_for("top.txt"),
    ]
    assert fs.cat_file(found[1]) == b"d/sub/two bin.txt"


def test_http_fail_next_n_then_succeed(http_server: HTTPServer, http_dir) -> None:
    (http_dir.path / "x.bin").write_bytes(b"payload")
    (http_dir.path / "other.bin").write_bytes(b"other")
    url = http_dir.url_for("x.bin")
    http_server.faults(fail_next=3, status=500, path="x.bin")
    fs = http_server.fs()

    assert fs.cat_file(http_dir.url_for("other.bin")) == b"other"  # path does not match
    for _ in range(3):
        with pytest.raises(aiohttp.ClientResponseError) as exc_info:
            fs.cat_file(url)
        assert exc_info.value.status == 500
    assert fs.cat_file(url) == b"payload"
    assert http_server.stats(url)["statuses"] == [500, 500, 500, 200]


def test_http_reset_mid_body(http_server: HTTPServer, http_dir) -> None:
    (http_dir.path / "x.bin").write_bytes(DATA)
    url = http_dir.url_for("x.bin")
    http_server.faults(reset_next=1, after_bytes=1000)
    fs = http_server.fs()
    with pytest.raises(aiohttp.ClientPayloadError):
        fs.cat_file(url)
    assert fs.cat_file(url) == DATA
    assert http_server.stats(url)["bytes"] == 1000 + len(DATA)


def test_http_delay_hits_client_timeout(http_server: HTTPServer, http_dir) -> None:
    (http_dir.path / "x.bin").write_bytes(b"slow")
    url = http_dir.url_for("x.bin")
    http_server.faults(delay_s=1.0, count=1)
    fs = http_server.fs(client_kwargs={"timeout": aiohttp.ClientTimeout(total=0.3)})
    with pytest.raises(asyncio.TimeoutError):
        fs.cat_file(url)
    # count=1: only the first request was delayed (default timeout: the machine may be busy)
    assert http_server.fs().cat_file(url) == b"slow"
    deadline = time.monotonic() + 5
    while len(http_server.stats(url)["statuses"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the delayed handler wakes up after 1 s and sees the client gone
    assert sorted(http_server.stats(url)["statuses"]) == [200, 499]


def _raw_get(url: str, timeout: float = 10) -> tuple[bytes, bytes, str]:
    """One request on a raw socket: (status line and headers, body, how it ended)."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n"
        sock.sendall(request.encode())
        data, ended = b"", "eof"
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                ended = "reset"
                break
            except TimeoutError:
                ended = "open"  # the server kept the connection: the answer was complete
                break
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")),
                None,
            )  # fmt: skip
            if length is not None and len(body) >= length:
                sock.settimeout(0.3)  # complete: does the server close now?
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, ended


def _header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def test_http_retry_after_on_injected_429_and_503(http_server: HTTPServer, http_dir) -> None:
    (http_dir.path / "x.bin").write_bytes(b"payload")
    url = http_dir.url_for("x.bin")
    http_server.faults(fail_next=1, status=429, retry_after=2)
    http_server.faults(fail_next=1, status=503, retry_after="Wed, 21 Oct 2037 07:28:00 GMT")
    fs = http_server.fs()
    for status, after in ((429, "2"), (503, "Wed, 21 Oct 2037 07:28:00 GMT")):
        with pytest.raises(aiohttp.ClientResponseError) as exc_info:
            fs.cat_file(url)
        assert exc_info.value.status == status
        assert exc_info.value.headers["Retry-After"] == after
    assert fs.cat_file(url) == b"payload"
    assert http_server.stats(url)["statuses"] == [429, 503, 200]


def test_http_short_body_ends_cleanly_before_content_length(http_server, http_dir) -> None:
    (http_dir.path / "x.bin").write_bytes(DATA)
    url = http_dir.url_for("x.bin")
    http_server.faults(short_next=1, after_bytes=1234)
    head, body, ended = _raw_get(url)
    assert _header(head, "Content-Length") == str(len(DATA))
    assert body == DATA[:1234] and ended == "eof"  # FIN, not RST
    with pytest.raises(aiohttp.ClientPayloadError):  # the next one too
        http_server.faults(short_next=1)
        http_server.fs().cat_file(url)
    assert http_server.fs().cat_file(url) == DATA


def test_http_consistent_content_length_lies(http_server: HTTPServer, http_dir) -> None:
    (http_dir.path / "x.bin").write_bytes(DATA)
    url = http_dir.url_for("x.bin")
    http_server.faults(lie_length=-1000, method="*")  # until cleared, GET and HEAD
    for _ in range(2):
        head, body, ended = _raw_get(url)
        assert _header(head, "Content-Length") == str(len(DATA) - 1000)
        assert body == DATA[:-1000] and ended == "open"  # a complete answer, wrong bytes
    assert http_server.fs().info(url)["size"] == len(DATA) - 1000
    assert http_server.fs().cat_file(url) == DATA[:-1000]  # a client cannot tell
    http_server.clear_faults()
    http_server.faults(lie_length=10)
    head, body, ended = _raw_get(url)
    assert _header(head, "Content-Length") == str(len(DATA) + 10)
    assert body == DATA and ended == "eof"


def test_http_slow_body(http_server: HTTPServer, http_dir) -> None:
    (http_dir.path / "x.bin").write_bytes(DATA[:20_000])
    url = http_dir.url_for("x.bin")
    http_server.faults(rate_bps=40_000, count=1)
    start = time.monotonic()
    assert http_server.fs().cat_file(url) == DATA[:20_000]
    slow = time.monotonic() - start
    start = time.monotonic()
    assert http_server.fs().cat_file(url) == DATA[:20_000]
    print(f"20 kB at 40 kB/s: {slow:.2f} s, then {time.monotonic() - start:.3f} s")
    assert (
        slow >= 0.4
    )  # 9 pauses of 0.05 s before the last piece: the server cannot send faster than its rate (a floor, not a target)


def test_http_bad_fault_rule_is_rejected(http_server: HTTPServer) -> None:
    with pytest.raises(
        ValueError, match="fail_next, delay_s, reset_next, short_next, rate_bps, lie_length"
    ):
        http_server.faults(status=500)


def test_http_pause_resume(http_server: HTTPServer, http_dir) -> None:
    (http_dir.path / "x.bin").write_bytes(b"kept")
    url = http_dir.url_for("x.bin")
    fs = http_server.fs(client_kwargs={"timeout": aiohttp.ClientTimeout(total=0.5)})
    http_server.pause()
    try:
        with pytest.raises(asyncio.TimeoutError):
            fs.cat_file(url)
    finally:
        http_server.resume()
    assert http_server.fs().cat_file(url) == b"kept"


# ------------------------------------------------------------------------- process handling
def test_own_server_restart_same_port_and_stop_when_paused(tmp_path) -> None:
    (tmp_path / "x.bin").write_bytes(b"x")
    with HTTPServer(root=tmp_path) as server:
        url, first_pid = server.url_for("x.bin"), server.pid
        server.restart()
        pid = server.pid
        assert server.url_for("x.bin") == url and pid != first_pid
        assert _get(url, timeout=5)[2] == b"x"
        server.pause()
        began = time.monotonic()
        server.stop()  # SIGTERM must reach a stopped process: no wait for the SIGKILL fallback
        assert time.monotonic() - began < server.stop_timeout
    assert not server.tmpdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_port_in_use_fails_with_server_log(http_server: HTTPServer) -> None:
    second = HTTPServer(port=http_server.port)
    try:
        with pytest.raises(ServerStartError, match="(?i)address already in use"):
            second.start()
    finally:
        second.close()


def test_crashing_server_reports_its_stderr() -> None:
    class Crashing(ServerProcess):
        def _command(self, port: int) -> list[str]:
            return [sys.executable, "-c", "import sys; sys.exit('boom on startup')"]

    server = Crashing()
    with pytest.raises(ServerStartError, match="boom on startup"):
        server.start()
    server.close()


# ------------------------------------------------------------------- the fault proxy (S3)
@pytest.fixture
def s3_proxy(s3_server: S3Server):
    from servers.proxy import FaultProxy

    with FaultProxy(s3_server.url, storage_options=s3_server.storage_options) as proxy:
        yield proxy


def test_proxy_forwards_s3_and_injects_s3_errors(s3_proxy, s3_server, s3_bucket) -> None:
    import botocore.exceptions

    s3_server.fs().pipe(f"{s3_bucket}/a.bin", DATA)
    url = f"{s3_bucket}/a.bin"
    fs = s3_proxy.fs(config_kwargs={"retries": {"total_max_attempts": 1}})
    fs.retries = 1  # s3fs's own retry loop: one try
    assert fs.cat_file(url) == DATA  # signed requests pass through
    fs.pipe(f"{s3_bucket}/b.bin", b"put through the proxy")  # and uploads
    assert s3_server.fs().cat_file(f"{s3_bucket}/b.bin") == b"put through the proxy"
    s3_proxy.faults(fail_next=1, status=503, retry_after=3)
    with pytest.raises(OSError) as info:
        fs.cat_file(url)
    cause = info.value.__cause__
    assert isinstance(cause, botocore.exceptions.ClientError)
    assert cause.response["Error"]["Code"] == "SlowDown"
    assert cause.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"
    s3_proxy.faults(short_next=1, after_bytes=100)
    with pytest.raises(Exception):  # noqa: B017 - botocore/aiohttp's incomplete-body error
        fs.cat_file(url)
    assert fs.cat_file(url) == DATA
    stats = s3_proxy.stats(url)
    assert stats["get"] == 4 and stats["statuses"].count(503) == 1  # (s3fs HEADs first)
    assert s3_proxy.stats()["injected"] == 2


def test_proxy_outage_keeps_the_objects(s3_proxy, s3_server, s3_bucket) -> None:
    import botocore.exceptions

    s3_server.fs().pipe(f"{s3_bucket}/a.bin", DATA)
    fs = s3_proxy.fs(config_kwargs={"retries": {"total_max_attempts": 1}})
    fs.retries = 1  # s3fs's own retry loop: one try
    port = s3_proxy.port
    s3_proxy.stop()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        fs.cat_file(f"{s3_bucket}/a.bin")
    s3_proxy.start()
    assert s3_proxy.port == port
    assert fs.cat_file(f"{s3_bucket}/a.bin") == DATA
