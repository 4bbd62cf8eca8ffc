"""libcurl GETs driven by asyncio (``sdsnodes._curl``), against the Range/fault HTTP server and a
TLS server on 127.0.0.1: bodies, statuses, short bodies, timeouts, a write error, TLS trust, a
proxy, and a forked child beside its parent."""

from __future__ import annotations

import asyncio
import datetime
import functools
import http.server
import multiprocessing
import os
import ssl
import threading
import time

import pytest

from sdsnodes import _curl

pytestmark = pytest.mark.skipif(not _curl.AVAILABLE, reason="pycurl is not installed")
DATA = bytes(range(256)) * 1000  # 256,000 bytes: several writes of libcurl's 64 KiB buffer


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture
def served(http_dir):
    (http_dir.path / "a.bin").write_bytes(DATA)
    (http_dir.path / "empty.bin").write_bytes(b"")
    return http_dir


def test_a_body_arrives_whole_and_empty_objects_make_empty_files(served, tmp_path):
    async def main():
        got = await asyncio.gather(
            *(_curl.get(served.url_for("a.bin"), str(tmp_path / f"a{i}")) for i in range(20))
        )
        empty = await _curl.get(served.url_for("empty.bin"), str(tmp_path / "e"))
        return got, empty

    got, empty = _run(main())
    assert {a.status for a in got} == {200}
    assert all((tmp_path / f"a{i}").read_bytes() == DATA for i in range(20))
    assert got[0].headers["content-length"] == str(len(DATA))
    assert empty.status == 200 and (tmp_path / "e").read_bytes() == b""


def test_an_error_status_is_answered_and_its_body_never_written(served, http_server, tmp_path):
    http_server.faults(fail_next=1, status=503, retry_after="7")
    answer = _run(_curl.get(served.url_for("a.bin"), str(tmp_path / "x")))
    assert (answer.status, answer.headers["retry-after"]) == (503, "7")
    assert answer.reason  # the status line's phrase
    missing = _run(_curl.get(served.url_for("nothing.bin"), str(tmp_path / "y")))
    assert missing.status == 404
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("fault", ["short_next", "reset_next"])
def test_a_body_cut_short_raises_curl_error(served, http_server, tmp_path, fault):
    http_server.faults(**{fault: 1, "after_bytes": 1000})
    with pytest.raises(_curl.CurlError, match="curl error") as caught:
        _run(_curl.get(served.url_for("a.bin"), str(tmp_path / "x")))
    assert isinstance(caught.value, OSError) and caught.value.code in (18, 56)
    # the pool goes on: the next GET of the same driver succeeds
    assert _run(_curl.get(served.url_for("a.bin"), str(tmp_path / "y"))).status == 200


def test_a_timeout_cancels_the_transfer_and_the_handle_serves_again(served, http_server, tmp_path):
    http_server.faults(delay_s=5, count=1)

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_curl.get(served.url_for("a.bin"), str(tmp_path / "x")), 0.3)
        again = await _curl.get(served.url_for("a.bin"), str(tmp_path / "y"))
        (driver,) = [d for (pid, _), d in _curl._drivers.items() if d.loop is loop]
        return again, driver

    loop = asyncio.new_event_loop()
    try:
        again, driver = loop.run_until_complete(main())
    finally:
        loop.close()
    assert again.status == 200 and (tmp_path / "y").read_bytes() == DATA
    assert driver._transfers == {} and len(driver._idle) >= 1


def test_a_new_loop_never_gets_the_driver_of_a_dead_loop_with_its_id(served, tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        stale = object.__new__(_curl._Driver)  # as left by a closed loop whose id was reused
        stale.loop = asyncio.new_event_loop()
        stale.loop.close()
        _curl._drivers[(os.getpid(), id(loop))] = stale
        answer = await _curl.get(served.url_for("a.bin"), str(tmp_path / "a"))
        driver = _curl._drivers[(os.getpid(), id(loop))]
        return answer, driver is not stale and driver.loop is loop

    answer, replaced = _run(main())
    assert answer.status == 200 and replaced
    assert (tmp_path / "a").read_bytes() == DATA


def test_a_write_error_is_raised_as_itself(served, tmp_path):
    with pytest.raises(FileNotFoundError):  # not a CurlError: a permanent error, never retried
        _run(_curl.get(served.url_for("a.bin"), str(tmp_path / "no-such-dir" / "x")))


def test_a_proxy_carries_the_get_and_the_environment_is_ignored(
    served, http_server, tmp_path, monkeypatch
):
    from servers.proxy import FaultProxy

    url = served.url_for("a.bin")
    with FaultProxy(http_server.url) as proxy:
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a dead proxy: never used
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # nor does it keep the route's proxy away
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert _run(_curl.get(url, str(tmp_path / "a"))).status == 200
        assert _run(_curl.get(url, str(tmp_path / "b"), _curl.Route(proxy.url))).status == 200
        # the proxy records a GET once it has sent the body: the client may be done before
        deadline = time.monotonic() + 10
        while proxy.stats()["get"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.stats()["get"] == 1
    assert (tmp_path / "b").read_bytes() == DATA


def _self_signed(tmp_path):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_pem, key_pem


@pytest.fixture
def tls_server(tmp_path):
    cert, key = _self_signed(tmp_path)
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.bin").write_bytes(DATA)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/a.bin", cert
    server.shutdown()
    server.server_close()


def test_tls_is_verified_against_the_bundle_given_else_the_systems(tls_server, tmp_path):
    url, cert = tls_server
    answer = _run(_curl.get(url, str(tmp_path / "a"), _curl.Route(ca_bundle=str(cert))))
    assert answer.status == 200 and (tmp_path / "a").read_bytes() == DATA
    with pytest.raises(_curl.CurlError, match="curl error (60|77|35)"):  # not in the system store
        _run(_curl.get(url, str(tmp_path / "b")))
    assert not (tmp_path / "b").exists()


def _child_gets(url, dest, queue):
    try:
        queue.put(asyncio.run(_curl.get(url, dest)).status)
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        queue.put(repr(error))


def test_a_forked_child_gets_on_its_own_driver_and_the_parent_goes_on(served, tmp_path):
    url = served.url_for("a.bin")
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(_curl.get(url, str(tmp_path / "p1"))).status == 200
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child_gets, args=(url, str(tmp_path / "c"), queue))
        child.start()
        assert queue.get(timeout=30) == 200
        child.join(30)
        assert child.exitcode == 0
        # the parent's pooled connection was not closed by the child
        assert loop.run_until_complete(_curl.get(url, str(tmp_path / "p2"))).status == 200
    finally:
        loop.close()
    assert (tmp_path / "c").read_bytes() == (tmp_path / "p2").read_bytes() == DATA
