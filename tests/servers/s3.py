"""moto's S3 server as a subprocess: ``python -m moto.server -H 127.0.0.1 -p PORT``.

moto keeps everything in memory, so ``stop()`` / ``restart()`` LOSE every bucket and object; use
``pause()`` / ``resume()`` (SIGSTOP / SIGCONT) to simulate an outage that keeps the data, or
re-upload after a restart. moto has no fault injection of its own (its ``/moto-api/`` only seeds,
resets and records), so 5xx / slow / reset responses are tested with the HTTP server
(``servers.http``).

:class:`ForkedS3Server` is the same server forked, after the uploads, into several processes on
one port (``moto_forked.py``), so that it can use more than the one core its GIL allows: for
benchmarks whose bound counts every core.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import ServerProcess

__all__ = ["CLIENT_ENV", "ForkedS3Server", "S3Server"]

#: Fake credentials and region for every AWS client in the test process; the EC2 instance
#: metadata service (169.254.169.254) is never probed.
CLIENT_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
}


class S3Server(ServerProcess):
    """An S3 endpoint on ``http://127.0.0.1:PORT`` served by moto (in memory).

    Attributes:
        url (str): endpoint URL, for ``endpoint_url``.
        storage_options (dict): keyword arguments for ``s3fs.S3FileSystem`` / ``fsspec.open``.
        env (dict[str, str]): credentials, region and no-metadata variables (see ``CLIENT_ENV``).
        client_env (dict[str, str]): ``env`` plus ``AWS_ENDPOINT_URL_S3``, for a subprocess
            (e.g. the CLI) that must reach this server without storage options.
    """

    name = "moto-s3"
    ready_path = "/"  # ListBuckets; not /moto-api/data.json, which 500s once a bucket was deleted

    env = CLIENT_ENV

    def _command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)]

    def _env(self) -> dict[str, str]:
        return {**os.environ, **CLIENT_ENV}

    @property
    def client_env(self) -> dict[str, str]:
        return {**CLIENT_ENV, "AWS_ENDPOINT_URL_S3": self.url}

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.url,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def fs(self, **overrides: Any):
        """A fresh ``s3fs.S3FileSystem`` for this server (instance cache skipped)."""
        import s3fs

        return s3fs.S3FileSystem(**{**self.storage_options, **overrides}, skip_instance_cache=True)

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` and return ``"s3://<name>"``.

        Not ``fs.mkdir(name)``: s3fs sends ``LocationConstraint=<client region>``, which S3 (and
        moto) reject for us-east-1 with ``InvalidLocationConstraint``.
        """
        self.fs().call_s3("create_bucket", Bucket=name)
        return f"s3://{name}"

    def reset(self) -> None:
        """Delete every bucket and object (moto's ``/moto-api/reset``) without a restart."""
        import urllib.request

        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)


class ForkedS3Server(S3Server):
    """moto's S3 server that, once :meth:`split`, serves one port from ``processes`` processes.

    Until :meth:`split` it is :class:`S3Server` (the same moto application in the same werkzeug
    server): upload everything then. :meth:`split` forks it (``moto_forked.py`` says how), so
    the server can use more than the one core its GIL allows; from then on treat the data as
    read-only (a write reaches one process only). For benchmarks; ``pause()`` stops the first
    process only, so fault tests use :class:`S3Server`.

    Args:
        processes (int): processes after the split, >= 1 (default 2).
        port (int | None): as :class:`servers.ServerProcess`.
    """

    name = "moto-s3-forked"

    def __init__(self, processes: int = 2, port: int | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        super().__init__(port)
        self.processes = processes

    def _command(self, port: int) -> list[str]:
        script = Path(__file__).with_name("moto_forked.py")
        return [sys.executable, str(script), self.host, str(port), str(self.processes)]

    @property
    def pids(self) -> list[int]:
        """The first process's pid, then its children's (after :meth:`split`)."""
        import psutil

        if self.pid is None:
            return []
        return [self.pid, *(child.pid for child in psutil.Process(self.pid).children())]

    def split(self, timeout_s: float = 30.0) -> None:
        """Fork the server into :attr:`processes` processes and wait until they serve.

        Raises:
            RuntimeError: the server is not running, or did not split within ``timeout_s``.
        """
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        os.kill(self.pid, signal.SIGUSR1)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout_s
        while len(self.pids) < self.processes:
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(f"{self.name} did not split: {self.log_tail()}")
            time.sleep(0.01)
        if not self._answers():  # connections wait in the backlog until a process accepts them
            raise RuntimeError(f"{self.name} does not answer after the split: {self.log_tail()}")
