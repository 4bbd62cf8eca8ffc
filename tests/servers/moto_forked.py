"""moto's S3 server in several processes on one port: upload first, then ``SIGUSR1`` forks it.

Usage: ``python moto_forked.py HOST PORT PROCESSES`` (run by path: it imports only moto and
werkzeug, so it needs no package on ``sys.path``).

Why: ``python -m moto.server`` is one Python process, so its GIL holds it near one core however
many the machine has (0.85-0.97 of a core measured on 2026-12-05, 2 cores). A benchmark whose
bound divides all the cores by the server's CPU per GET needs a server that can use them all.

How: until it gets ``SIGUSR1`` this is the same server as ``python -m moto.server`` (moto's
``DomainDispatcherApplication`` in werkzeug's ``ThreadedWSGIServer``, one thread per
connection, every request logged), so the data is uploaded to one process. ``SIGUSR1`` stops
the serving loop (the listening socket stays open: connections made meanwhile wait in its
backlog), waits until the request threads have ended, and forks ``PROCESSES - 1`` children.
Every process then accepts on the same listening socket and holds a copy of the data (the
kernel shares its pages until one is written). The pre-fork model, as gunicorn's workers
share one listening socket.

After the split the data is READ-ONLY in practice: a write lands in the one process that
accepted its connection, so later reads see it or not by chance. The children get
``PR_SET_PDEATHSIG`` = SIGKILL, so stopping the first process (``SIGTERM``, as
:class:`servers.ServerProcess` does) stops them all.
"""

from __future__ import annotations

import os
import sys

# Run by path, this folder heads sys.path, and its http.py would shadow the standard library's.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import ctypes  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

SPLIT_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1


def _serve(app, host: str, port: int, listener: socket.socket, splits: bool = False) -> None:
    from werkzeug.serving import ThreadedWSGIServer

    server = ThreadedWSGIServer(host, port, app, fd=listener.fileno())  # a dup of the socket
    if splits:  # SIGUSR1 ends this serving loop
        # shutdown() waits for serve_forever to return, so it cannot run in the handler's thread
        signal.signal(
            SPLIT_SIGNAL, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()
        )
    server.serve_forever()  # closes only its dup of the listening socket


def _wait_for_request_threads(timeout_s: float = 30.0) -> None:
    """The request threads are daemons that ``server_close`` does not join: wait them out, so
    that no thread holds a lock (or half a request) when the process forks."""
    deadline = time.monotonic() + timeout_s
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    if threading.active_count() > 1:
        sys.exit(f"moto_forked: {threading.active_count() - 1} threads still running, no fork")


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        sys.exit("usage: moto_forked.py HOST PORT PROCESSES")
    host, port, processes = argv[0], int(argv[1]), int(argv[2])
    if processes < 1:
        sys.exit(f"moto_forked: PROCESSES must be >= 1, got {processes}")
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server sets it
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # as moto.server sets it
    listener = socket.create_server((host, port), backlog=128)  # werkzeug's LISTEN_QUEUE
    _serve(app, host, port, listener, splits=True)
    signal.signal(SPLIT_SIGNAL, signal.SIG_IGN)  # a second split is a no-op
    _wait_for_request_threads()
    parent = os.getpid()
    for _ in range(processes - 1):
        if os.fork() == 0:
            if sys.platform.startswith("linux"):
                ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            _serve(app, host, port, listener)
            os._exit(0)
    print(f"moto_forked: serving in {processes} processes", file=sys.stderr, flush=True)
    _serve(app, host, port, listener)


if __name__ == "__main__":
    main(sys.argv[1:])
