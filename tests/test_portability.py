"""Without ``fcntl`` (Windows) and without ``/proc`` (macOS), simulated here: sdsnodes imports,
the cache's locks still exclude (threads and processes: one download per URL), and a dead
process is still told from a live one."""

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from sdsnodes.cache import _procs

NO_FCNTL = textwrap.dedent(
    """
    import sys
    sys.modules["fcntl"] = None  # as on Windows: `import fcntl` fails
    import concurrent.futures, json, os, pathlib, time
    import sdsnodes
    from sdsnodes.cache import Cache, paths
    assert paths.PORTABLE
    root, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def fetch_of(i):
        def fetch(tmp):
            with open(log, "a") as f:
                f.write(f"{i}\\n")
            time.sleep(0.02)
            tmp.write_bytes(bytes([i]) * (1000 + i))
        return fetch

    cache = Cache(root, max_bytes=10**6)
    def get(i):
        path = cache.get(f"https://example.invalid/{i}.bin", fetch_of(i), size_hint=1000 + i)
        ok = path.read_bytes() == bytes([i]) * (1000 + i)
        cache.unpin(f"https://example.invalid/{i}.bin")
        return ok
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(get, [i % n for i in range(4 * n)]))
    cache.close()
    print(json.dumps({"ok": all(results), "count": len(results)}))
    """
)


def test_cache_without_fcntl_downloads_each_url_once_across_threads_and_processes(tmp_path):
    root, log, n = tmp_path / "cache", tmp_path / "fetches.log", 12
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", NO_FCNTL, str(root), str(log), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.splitlines()[-1]) == {"ok": True, "count": 4 * n}
    fetched = sorted(int(line) for line in log.read_text().split())
    assert fetched == list(range(n))  # each URL downloaded once, machine-wide


def test_import_without_fcntl_says_what_it_gives_up():
    code = 'import sys; sys.modules["fcntl"] = None; from sdsnodes.cache import paths; print(paths.PORTABLE)'
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    from sdsnodes.cache import paths

    assert paths.PORTABLE is False  # here, Linux: fcntl locks, unchanged


@pytest.mark.parametrize("has_proc", [True, False])
def test_liveness_with_and_without_proc(monkeypatch, has_proc):
    monkeypatch.setattr(_procs, "HAS_PROC", has_proc)
    me = _procs.pid_start(os.getpid())
    assert me and _procs.is_alive(os.getpid(), me)
    assert not _procs.is_alive(os.getpid(), me + 1)  # the pid reused by a later process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = _procs.pid_start(child.pid)
    child.wait()  # reaped: gone
    assert start is None or not _procs.is_alive(child.pid, start)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _procs.pid_start(zombie.pid) is None and not _procs.is_alive(zombie.pid, 0)
    zombie.wait()
    if not has_proc:  # psutil's create time, in hundredths of a second
        assert abs(me - round(psutil.Process().create_time() * 100)) <= 1
