"""An FTP server on 127.0.0.1 (pyftpdlib, anonymous, writable): a real *sync* fsspec filesystem
(``FTPFileSystem`` uses ftplib), for the code paths that async stores (S3, GCS, HTTP) skip."""

from __future__ import annotations

import socket
import sys
from typing import Any

from . import ServerProcess


class FTPServer(ServerProcess):
    """``ftp://127.0.0.1:PORT/`` serving :attr:`root` to an anonymous user with write rights.

    Attributes:
        root (Path): the served directory (files written there are served at once).
        storage_options (dict): ``host`` and ``port`` for ``fsspec``'s ``FTPFileSystem``.
    """

    name = "ftp"

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.root = self.tmpdir / "root"
        self.root.mkdir(parents=True, exist_ok=True)

    def _command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "pyftpdlib", "-i", self.host, "-p", str(port),
            "-d", str(self.root), "-w",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"ftp://{self.host}:{self.port}"

    def url_for(self, name: str) -> str:
        """The ``ftp://`` URL of ``root / name``."""
        return f"{self.url}/{name}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}

    def _answers(self) -> bool:  # FTP greets with "220" on connect
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as conn:
                return conn.recv(3) == b"220"
        except OSError:
            return False
