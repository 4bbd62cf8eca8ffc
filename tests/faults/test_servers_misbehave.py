"""Servers that misbehave (issue 10, suite item 3): retries, Retry-After, checksums, outages.

Every fault goes through a real loopback server (``tests/servers/http.py``, or the fault proxy
``tests/servers/proxy.py`` in front of moto's S3) and sdsnodes' own download path.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

import google_crc32c
import pytest

from sdsnodes._checksum import ChecksumMismatch, parse_checksum
from sdsnodes.errors import DownloadError
from sdsnodes.storage import fetch, fetch_soon

DATA = os.urandom(50_000)


def _digests(data: bytes) -> dict[str, tuple[str, str]]:
    """Each algorithm's digest, in the encodings object stores use."""
    crc = google_crc32c.Checksum(data).digest()
    return {
        "md5-hex": ("md5", hashlib.md5(data).hexdigest()),
        "md5-etag": ("md5", f'"{hashlib.md5(data).hexdigest()}"'),
        "md5-b64": ("md5", base64.b64encode(hashlib.md5(data).digest()).decode()),
        "sha256-hex": ("sha256", hashlib.sha256(data).hexdigest()),
        "sha256-b64": ("sha256", base64.b64encode(hashlib.sha256(data).digest()).decode()),
        "crc32c-b64": ("crc32c", base64.b64encode(crc).decode()),
        "crc32c-hex": ("crc32c", crc.hex()),
    }


# ---------------------------------------------------------------------------- checksums
@pytest.mark.parametrize("encoding", sorted(_digests(b"")))
def test_checksum_accepts_the_right_bytes(http_dir, tmp_path, encoding) -> None:
    (http_dir.path / "a.bin").write_bytes(DATA)
    dest = tmp_path / "a.bin"
    size = fetch(http_dir.url_for("a.bin"), dest, checksum=_digests(DATA)[encoding])
    assert size == len(DATA)
    assert dest.read_bytes() == DATA


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "crc32c"])
def test_checksum_mismatch_is_permanent_and_removes_the_file(
    http_server, http_dir, tmp_path, algorithm
) -> None:
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    wrong = _digests(DATA[::-1])[f"{algorithm}-hex"]
    dest = tmp_path / "a.bin"
    with pytest.raises(ChecksumMismatch) as info:
        fetch(url, dest, checksum=wrong)
    assert isinstance(info.value, DownloadError)
    assert info.value.reason == "checksum"
    assert url in str(info.value) and algorithm in str(info.value)
    assert not dest.exists()  # wrong bytes never stay where a cache could rename them
    assert http_server.stats(url)["get"] == 1  # not retried

    with pytest.raises(ChecksumMismatch):  # the asynchronous path too
        fetch_soon(url, dest, checksum=wrong).result(timeout=60)
    assert not dest.exists()
    assert http_server.stats(url)["get"] == 2


@pytest.mark.parametrize(
    "bad",
    [("md4", "00"), ("md5", "xyz"), ("md5", "abc-3"), ("sha256", "0" * 32), "md5", ("crc32c",)],
)
def test_malformed_checksum_is_refused_before_downloading(http_server, http_dir, bad) -> None:
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    with pytest.raises(ValueError, match="must be"):
        fetch(url, "/nonexistent/never-written", checksum=bad)
    with pytest.raises(ValueError, match="must be"):
        fetch_soon(url, "/nonexistent/never-written", checksum=bad)
    with pytest.raises(ValueError):
        parse_checksum(bad)
    assert http_server.stats(url)["get"] == 0


# ----------------------------------------------------------------------- the retry policy
def test_transient_statuses_are_retried_permanent_ones_are_not(http_server, http_dir, tmp_path):
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    for status in (500, 502, 503, 504, 429, 408):
        http_server.reset_stats()
        http_server.faults(fail_next=2, status=status)
        assert fetch(url, tmp_path / "a.bin", backoff_s=0.05) == len(DATA)
        assert http_server.stats(url)["statuses"] == [status, status, 200]
    for status in (400, 401, 403, 410, 501):
        http_server.reset_stats()
        http_server.faults(fail_next=1, status=status)
        with pytest.raises(Exception) as info:
            fetch(url, tmp_path / "a.bin", backoff_s=0.05)
        assert getattr(info.value, "status", None) == status
        assert http_server.stats(url)["statuses"] == [status]  # one request, no retry
        http_server.clear_faults()


def test_deadline_bounds_the_retries_and_the_error_says_why(http_server, http_dir, tmp_path):
    (http_dir.path / "a.bin").write_bytes(DATA)
    url = http_dir.url_for("a.bin")
    http_server.faults(fail_next=10**6, status=503)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_soon(url, tmp_path / "a.bin", backoff_s=0.05, deadline_s=2.0).result(timeout=60)
    elapsed = time.monotonic() - start
    gets = http_server.stats(url)["get"]
    message = str(info.value)
    assert url in message and "2 s deadline" in message and "503" in message
    assert f"failed after {gets} attempts" in message
    assert 2.0 <= elapsed < 30  # not before the deadline; generous hang guard after it
    assert gets <= 21  # the default retries bound the requests too
    http_server.reset_stats()
    with pytest.raises(DownloadError, match="3 retries"):
        fetch(url, tmp_path / "a.bin", retries=3, backoff_s=0.05)
    assert http_server.stats(url)["get"] == 4
    print(f"FIGURE deadline: 2 s deadline, gave up after {elapsed:.1f} s and {gets} requests")
