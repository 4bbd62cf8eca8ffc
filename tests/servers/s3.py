"""moto's S3 server as a subprocess: ``python -m moto.server -H 127.0.0.1 -p PORT``.

moto keeps everything in memory, so ``stop()`` / ``restart()`` LOSE every bucket and object; use
``pause()`` / ``resume()`` (SIGSTOP / SIGCONT) to simulate an outage that keeps the data, or
re-upload after a restart. moto has no fault injection of its own (its ``/moto-api/`` only seeds,
resets and records), so 5xx / slow / reset responses are tested with the HTTP server
(``servers.http``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import ServerProcess

__all__ = ["CLIENT_ENV", "S3Server"]

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
