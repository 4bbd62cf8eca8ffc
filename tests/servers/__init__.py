"""Real storage servers on 127.0.0.1 for the tests: S3 (moto), GCS (fake-gcs-server), HTTP (aiohttp).

Each server is a subprocess managed by a :class:`ServerProcess`: ``start()`` picks a free port the
first time and keeps it, so ``stop()`` then ``start()`` (or ``restart()``) brings the server back on
the SAME port, which is what the "server went away mid-epoch" fault tests need. ``pause()`` /
``resume()`` send SIGSTOP / SIGCONT: the kernel keeps accepting connections while the process is
stopped, so clients hang until their own timeout, and nothing stored is lost. ``close()`` stops the
server and deletes its temporary directory (logs, stored data); the context manager calls it.

Stale processes: every started server is registered for an ``atexit`` ``close()``, and on Linux the
child gets ``PR_SET_PDEATHSIG`` = SIGKILL, so it dies with the thread that started it even when the
test process is killed (``kill -9``, pytest-timeout's ``os._exit``). Start servers from the main
thread (fixtures do): the signal fires when the *starting thread* exits.

The servers write stdout and stderr to a log file in their temporary directory, never to a pipe
(a pipe nobody reads fills up after 64 KiB of request logs and freezes the server).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

__all__ = ["ServerProcess", "ServerStartError", "free_port", "port_is_free"]

_LIVE: weakref.WeakSet[ServerProcess] = weakref.WeakSet()
_PR_SET_PDEATHSIG = 1
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    """The server process exited or did not answer within the start timeout."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as the servers use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@atexit.register
def _close_all() -> None:
    for server in list(_LIVE):
        server.close()


class ServerProcess:
    """A server subprocess on 127.0.0.1 that can be stopped, restarted and paused.

    Subclasses implement :meth:`_command` (the argv for a given port) and may override
    :meth:`_env` (the subprocess environment), :attr:`ready_path` (polled until the server
    answers any HTTP status) and :attr:`start_timeout` (seconds).
    """

    host = "127.0.0.1"
    ready_path = "/"
    start_timeout = 20.0
    stop_timeout = 5.0
    name = "server"

    def __init__(self, port: int | None = None) -> None:
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"sds-{self.name}-"))
        self.log_path = self.tmpdir / "server.log"
        self.startup_seconds: float | None = None  # duration of the last start()

    # ----------------------------------------------------------------------------- subclass API
    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _cwd(self) -> str | None:
        return None  # inherit

    # ------------------------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive (paused counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> ServerProcess:
        """Start the server (same port as before after a stop) and wait until it answers."""
        if self.running:
            return self
        began = time.monotonic()
        if self._port is None:  # first start: a free port, retried if another process grabs it
            for attempt in range(3):
                self._port = free_port(self.host)
                try:
                    self._spawn_and_wait()
                    break
                except ServerStartError:
                    if attempt == 2:
                        raise
        else:
            self._spawn_and_wait()
        self.startup_seconds = time.monotonic() - began
        _LIVE.add(self)
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``stop_timeout``); keep port and data dir."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            if self._paused:  # a stopped process only acts on SIGTERM once continued
                os.kill(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._paused = False

    def restart(self) -> ServerProcess:
        """``stop()`` then ``start()`` on the same port."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but never answered."""
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        os.kill(self._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        self._paused = True
        self._wait_stopped(True)

    def resume(self) -> None:
        """SIGCONT a paused server; requests queued meanwhile are then served."""
        if self._paused and self.running:
            os.kill(self._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            self._wait_stopped(False)
        self._paused = False

    def ensure_running(self) -> None:
        """Undo a test's ``pause()`` or ``stop()``: resume or start the server."""
        if self._paused:
            self.resume()
        if not self.running:
            self.start()

    def close(self) -> None:
        """Stop the server and delete its temporary directory (stored data, logs)."""
        self.stop()
        _LIVE.discard(self)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ will not run
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self._port and self.url} pid={self.pid} {state}>"

    # --------------------------------------------------------------------------------- helpers
    def log_tail(self, num_bytes: int = 4000) -> str:
        """The end of the server's combined stdout/stderr log."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-num_bytes:].decode(errors="replace")

    def _wait_stopped(self, stopped: bool, timeout: float = 5.0) -> None:
        """Wait until every thread is (or no thread is) in state T: kill() returns before that,
        and a multi-threaded server (Go) may answer a request in between."""
        tasks = Path(f"/proc/{self.pid}/task")
        if not tasks.is_dir():  # not Linux: give the signal a moment
            time.sleep(0.05)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for stat in tasks.glob("*/stat"):
                try:  # "pid (comm) S ...": the state follows the last ')'
                    states.append(stat.read_text().rpartition(")")[2].split()[0] in "tT")
                except (OSError, IndexError):
                    continue  # thread exited meanwhile
            if states and all(s == stopped for s in states):
                return
            time.sleep(0.005)
        raise RuntimeError(
            f"{self.name} (pid {self.pid}) did not {'stop' if stopped else 'resume'}"
        )

    def _spawn_and_wait(self) -> None:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        port = self.port
        if not port_is_free(port, self.host):  # else the readiness probe would reach its owner
            raise ServerStartError(
                f"{self.name} cannot start: {self.host}:{port}: address already in use "
                "(by another process)"
            )
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting on port {port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self._cwd(),
                start_new_session=True,  # a Ctrl-C in the terminal goes to pytest, not here
                preexec_fn=_die_with_parent,
            )
        self._paused = False
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise ServerStartError(
                    f"{self.name} exited with code {code} while starting on port {port}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} did not answer on {self.url}{self.ready_path} within "
                    f"{self.start_timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with _NO_PROXY_OPENER.open(self.url + self.ready_path, timeout=2):
                return True
        except urllib.error.HTTPError:  # any HTTP status means the server is up
            return True
        except OSError:
            return False
