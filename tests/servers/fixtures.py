"""pytest fixtures for the storage servers (loaded by ``tests/conftest.py``'s ``pytest_plugins``).

Session-scoped servers, started on first use (each in well under a second):
  - ``s3_server`` (:class:`~servers.s3.S3Server`): also sets the fake AWS credentials, region and
    ``AWS_EC2_METADATA_DISABLED`` in ``os.environ`` for the session.
  - ``gcs_server`` (:class:`~servers.gcs.GCSServer`).
  - ``http_server`` (:class:`~servers.http.HTTPServer`).

Function-scoped helpers, which also undo a previous test's ``pause()`` / ``stop()`` of the shared
server before and after the test:
  - ``s3_bucket``: a new bucket, ``"s3://<name>"``, deleted afterwards.
  - ``gcs_bucket``: a new bucket, ``"gs://<name>"``, deleted afterwards.
  - ``http_dir``: a new directory under ``http_server.root`` (:class:`ServedDir`, ``.path`` and
    ``.url``), with the fault rules and stats cleared before the test and the rules after.

A test that stops or restarts a shared server must leave it running (the helpers above do that
for the next test); a test that needs a server of its own uses the classes directly:
``with S3Server() as server: ...``.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .ftp import FTPServer
from .gcs import GCSServer
from .http import HTTPServer
from .s3 import CLIENT_ENV, S3Server

__all__ = [
    "ServedDir",
    "gcs_bucket",
    "gcs_server",
    "http_dir",
    "http_server",
    "s3_bucket",
    "s3_server",
]


@dataclass(frozen=True)
class ServedDir:
    """A directory served by ``http_server``: write files under ``path``, fetch them at ``url``."""

    path: Path
    url: str  # no trailing slash

    def url_for(self, relpath: str) -> str:
        """URL of ``path / relpath`` (percent-encoded, e.g. a space becomes ``%20``)."""
        return f"{self.url}/{urllib.parse.quote(relpath.lstrip('/'))}"


def _unique_name(request: pytest.FixtureRequest) -> str:
    """A bucket-safe name (3-63 chars of [a-z0-9-]) that says which test made it."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"sds-{slug}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CLIENT_ENV.items():
            mp.setenv(key, value)
        with S3Server() as server:
            yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    with GCSServer() as server:
        yield server


@pytest.fixture(scope="session")
def ftp_server() -> Iterator[FTPServer]:
    """pyftpdlib on 127.0.0.1 (anonymous, writable): a real sync fsspec filesystem."""
    with FTPServer() as server:
        yield server


@pytest.fixture(scope="session")
def http_server() -> Iterator[HTTPServer]:
    with HTTPServer() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[str]:
    s3_server.ensure_running()
    url = s3_server.make_bucket(_unique_name(request))
    yield url
    s3_server.ensure_running()
    try:
        s3_server.fs().rm(url, recursive=True)
    except OSError:  # gone already: the test deleted it or restarted moto (in-memory)
        pass


@pytest.fixture
def gcs_bucket(gcs_server: GCSServer, request: pytest.FixtureRequest) -> Iterator[str]:
    gcs_server.ensure_running()
    url = gcs_server.make_bucket(_unique_name(request))
    yield url
    gcs_server.ensure_running()
    try:
        gcs_server.fs().rm(url, recursive=True)
    except OSError:
        pass


@pytest.fixture
def http_dir(http_server: HTTPServer, request: pytest.FixtureRequest) -> Iterator[ServedDir]:
    http_server.ensure_running()
    http_server.clear_faults()
    http_server.reset_stats()
    path = http_server.root / _unique_name(request)
    path.mkdir()
    yield ServedDir(path=path, url=http_server.url_for(path.name))
    http_server.ensure_running()
    http_server.clear_faults()
