"""Tests of sdsnodes.cache: real files, real processes (spawn), no network."""

from __future__ import annotations

import atexit
import concurrent.futures
import errno
import logging
import multiprocessing
import os
import pathlib
import pickle
import random
import sqlite3
import subprocess
import threading
import time

import pytest

from sdsnodes.cache import Cache, EvictionPolicy
from sdsnodes.cache import paths as cpaths
from sdsnodes.cache._procs import own_start
from sdsnodes.cache.policy import rank_for

SPAWN = multiprocessing.get_context("spawn")


# -- helpers (module level: spawn children unpickle them by reference) ------------------------


class Writer:
    """A fetch writing ``size`` bytes (each ``size % 251``) after ``delay`` seconds, counting
    its calls in the file ``log`` (a line per call, from any process)."""

    def __init__(self, size: int, log: str | None = None, delay: float = 0.0) -> None:
        self.size, self.log, self.delay = size, log, delay
        self.calls = 0  # in this process

    def __call__(self, tmp: pathlib.Path) -> None:
        self.calls += 1
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(self.delay)
        tmp.write_bytes(bytes([self.size % 251]) * self.size)


def calls(log: pathlib.Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def on_disk(root: pathlib.Path) -> tuple[int, int]:
    """(bytes of cached files, number of *.tmp files) under ``root``: every file but the
    ledger and the lock files."""
    size = tmps = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".locks"]
        for name in names:
            if name.endswith(".tmp"):
                tmps += 1
            elif not name.startswith("ledger.sqlite"):
                try:
                    size += os.stat(os.path.join(folder, name)).st_size
                except FileNotFoundError:  # evicted during the walk
                    pass
    return size, tmps


def rows(root: pathlib.Path) -> list[tuple]:
    conn = sqlite3.connect(root / "ledger.sqlite")
    try:
        return conn.execute("SELECT key, state, size FROM files").fetchall()
    finally:
        conn.close()


def _exit_fast() -> None:
    atexit.register(os._exit, 0)  # skip the interpreter's teardown: seconds with torch loaded


@pytest.fixture(scope="module")
def workers():
    """Four spawn processes, started once (each child imports sdsnodes: seconds)."""
    pool = concurrent.futures.ProcessPoolExecutor(4, mp_context=SPAWN, initializer=_exit_fast)
    with pool:
        yield pool


def run_in(workers, target, args_list) -> None:
    """Run ``target(*args)`` for each args at once, one per worker process; re-raise errors."""
    assert len(args_list) <= 4
    for future in [workers.submit(target, *args) for args in args_list]:
        future.result(timeout=120)


def run_children(target, args_list) -> None:
    procs = [SPAWN.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _rendezvous(gate: str, n: int) -> None:
    """Wait until ``n`` threads (of any process) called this with the same ``gate`` folder."""
    pathlib.Path(gate, f"{os.getpid()}-{threading.get_ident()}").touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(gate)) < n:
        assert time.monotonic() < deadline, "the other threads did not come"
        time.sleep(0.001)


def _download_once_child(root, url, log, gate, n_threads):
    cache = Cache(root, max_bytes=1 << 20)
    errors = []

    def work():
        try:
            _rendezvous(gate, 16)
            with cache.pinned(url, Writer(1000, log, delay=0.3), size_hint=1000) as path:
                assert path.read_bytes() == bytes([1000 % 251]) * 1000
        except BaseException as e:  # reported through the exit code
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    if errors:
        raise errors[0]


def _budget_child(root, max_bytes, pool, seed):
    cache = Cache(root, max_bytes=max_bytes)
    rng = random.Random(seed)
    for url, size in rng.sample(pool, 200):
        path = cache.get(url, Writer(size), size_hint=size)
        assert path.stat().st_size == size
        cache.unpin(url)
    cache.close()


def _pin_and_die(root, pinned, fetching):
    cache = Cache(root)
    cache.get(pinned, Writer(1000), size_hint=1000)

    def fetch(tmp):
        tmp.write_bytes(b"half")
        os._exit(0)  # no unpin, no close, half a download: as if killed

    cache.get(fetching, fetch, size_hint=1000)


def _forked_get(cache, url):
    cache.get(url, Writer(300))
    cache.unpin(url)
    cache.close()


# -- tests -------------------------------------------------------------------------------------


def test_miss_then_hit(tmp_path):
    log = tmp_path / "calls"
    with Cache(tmp_path / "c") as cache:
        path = cache.get("s3://bucket/a.jpg", Writer(100, str(log)))
        assert path == cache.path_for("s3://bucket/a.jpg") and path.suffix == ".jpg"
        assert path.read_bytes() == bytes([100]) * 100
        assert cache.get("s3://bucket/a.jpg", Writer(100, str(log))) == path
        assert calls(log) == 1
        stats = cache.stats()
        assert (stats["hits"], stats["misses"], stats["bytes_fetched"]) == (1, 1, 100)
        assert stats["process"] == {"hits": 1, "misses": 1, "bytes_fetched": 100}
        assert (stats["files"], stats["bytes"], stats["pinned_files"]) == (1, 100, 1)
        cache.unpin("s3://bucket/a.jpg")
        cache.unpin("s3://bucket/a.jpg")
        assert cache.stats()["pinned_files"] == 0
        with pytest.raises(ValueError, match="does not pin"):
            cache.unpin("s3://bucket/a.jpg")
        with cache.pinned("s3://bucket/a.jpg", Writer(100, str(log))) as p:
            assert p == path and cache.stats()["pinned_bytes"] == 100
        assert cache.stats()["pinned_files"] == 0 and calls(log) == 1


@pytest.mark.parametrize("kind", ["error", "enospc", "nothing"])
def test_failed_fetch_leaves_nothing(tmp_path, kind):
    root = tmp_path / "c"
    cache = Cache(root, max_bytes=10_000)
    error = ValueError("boom") if kind == "error" else OSError(errno.ENOSPC, "disk full")

    def fetch(tmp):
        if kind == "nothing":
            return
        with open(tmp, "wb") as f:
            f.write(b"x" * 700)
        raise error

    expected = FileNotFoundError if kind == "nothing" else type(error)
    with pytest.raises(expected) as info:
        cache.get("http://h/x.bin", fetch, size_hint=1000)
    if kind != "nothing":
        assert info.value is error
    assert on_disk(root) == (0, 0)
    assert rows(root) == []
    stats = cache.stats()
    assert (stats["files"], stats["bytes"], stats["pinned_files"]) == (0, 0, 0)
    # the reservation was released: the whole budget is usable again
    cache.get("http://h/x.bin", Writer(10_000), size_hint=10_000)
    assert on_disk(root) == (10_000, 0)
    cache.close()


def test_download_once_across_processes_and_threads(tmp_path, workers):
    root, log, gate = str(tmp_path / "c"), str(tmp_path / "calls"), tmp_path / "gate"
    gate.mkdir()
    run_in(workers, _download_once_child, [(root, "s3://b/same.tar", log, str(gate), 4)] * 4)
    assert len({name.split("-")[0] for name in os.listdir(gate)}) == 4  # 4 processes
    assert calls(pathlib.Path(log)) == 1
    with Cache(root) as cache:
        stats = cache.stats()
    assert (stats["misses"], stats["hits"], stats["pinned_files"]) == (1, 15, 0)
    locks = sorted(p.name for p in (pathlib.Path(root) / ".locks").iterdir())
    assert locks == ["keys.lock", "open.lock", "users.lock"]  # no lock file per key (Linux)


def test_budget_holds_under_concurrent_processes(tmp_path, workers):
    root = tmp_path / "c"
    rng = random.Random(0)
    pool = [(f"s3://b/{i}.bin", rng.randint(1000, 8000)) for i in range(300)]
    largest, max_bytes = max(s for _, s in pool), 64_000
    Cache(root).close()  # create the ledger
    samples, done = [], threading.Event()

    def sample():
        # Hold the ledger's write lock while walking the directory: renames and evictions
        # then stand still, so the walk sees one consistent state of the disk.
        conn = sqlite3.connect(root / "ledger.sqlite", timeout=30, isolation_level=None)
        while not done.is_set():
            conn.execute("BEGIN IMMEDIATE")
            samples.append(on_disk(root)[0])
            conn.execute("ROLLBACK")
            time.sleep(0.005)
        conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run_in(workers, _budget_child, [(str(root), max_bytes, pool, seed) for seed in range(4)])
    finally:
        done.set()
        sampler.join()
    assert len(samples) > 20
    assert max(samples) <= max_bytes + largest, max(samples)
    with Cache(root, max_bytes=max_bytes) as cache:
        stats = cache.stats()
    assert stats["bytes"] == on_disk(root)[0] <= max_bytes
    assert on_disk(root)[1] == 0 and stats["pinned_files"] == 0
    assert stats["evictions"] > 0 and stats["hits"] + stats["misses"] == 800


def test_pinned_file_is_never_evicted(tmp_path):
    cache = Cache(tmp_path, max_bytes=5000)
    keep = cache.get("s3://b/keep", Writer(2000), size_hint=2000)
    for i in range(20):
        with cache.pinned(f"s3://b/{i}", Writer(1500), size_hint=1500):
            pass
        cache.trim()
        assert keep.stat().st_size == 2000
    assert cache.stats()["evictions"] >= 18
    assert on_disk(tmp_path)[0] <= 5000
    cache.unpin("s3://b/keep")
    with Cache(tmp_path, max_bytes=1000) as small:
        assert small.trim() >= 2000
    assert not keep.exists()
    cache.close()


def test_leftovers_of_dead_processes_are_reclaimed(tmp_path):
    root = tmp_path / "c"
    cache = Cache(root, max_bytes=1000)  # opened before the child: reclaims when room is needed
    run_children(_pin_and_die, [(str(root), "s3://b/dead", "s3://b/half")])
    dead = cache.path_for("s3://b/dead")
    assert dead.exists() and cache.stats()["pinned_files"] == 1
    assert on_disk(root) == (1000, 1) and ("reserved", 1000) in [r[1:] for r in rows(root)]
    cache.get("s3://b/new", Writer(1000), size_hint=1000)  # only the dead process is in the way
    assert not dead.exists() and cache.stats()["evictions"] == 1
    assert on_disk(root) == (1000, 0) and [r[1:] for r in rows(root)] == [("ready", 1000)]
    # a process opening the cache reclaims dead pins at once
    gone = subprocess.Popen(["true"])
    gone.wait()
    conn = sqlite3.connect(root / "ledger.sqlite")
    with conn:
        conn.execute("INSERT INTO pins VALUES (?, ?, 0, 1)", (rows(root)[0][0], gone.pid))
    conn.close()
    cache.unpin("s3://b/new")
    assert cache.stats()["pinned_files"] == 1
    with Cache(root) as other:
        assert other.stats()["pinned_files"] == 0
    cache.close()


def test_half_written_files_removed_at_open(tmp_path):
    with Cache(tmp_path) as cache:
        final = cache.get("s3://b/a.bin", Writer(10))
    pid = os.getpid()
    stale = final.with_name(f"{final.name}.{pid}-1.abcd.tmp")  # our pid, another start: reused
    stale.write_bytes(b"half")
    mine = cpaths.tmp_path_for(final, pid, own_start())
    mine.write_bytes(b"live")
    with Cache(tmp_path) as cache:
        cache.stats()
    assert not stale.exists() and mine.exists() and final.exists()


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_ledger_rebuilt_from_files(tmp_path, damage):
    urls = [f"gs://b/{i}.png" for i in range(3)]
    with Cache(tmp_path) as cache:
        for i, url in enumerate(urls):
            cache.get(url, Writer(100 + i))
    ledger = tmp_path / "ledger.sqlite"
    if damage == "garbage":
        ledger.write_bytes(b"this is not a database " * 100)
    else:
        ledger.unlink()
    log = tmp_path / "calls"
    with Cache(tmp_path, max_bytes=1000) as cache:
        stats = cache.stats()
        assert (stats["files"], stats["bytes"], stats["pinned_files"]) == (3, 303, 0)
        assert cache.get(urls[1], Writer(101, str(log))).read_bytes() == bytes([101]) * 101
        assert calls(log) == 0 and cache.stats()["hits"] == 1
    assert len(list(tmp_path.glob("ledger.sqlite.corrupt-*"))) == (damage == "garbage")


def test_ttl_expires_unpinned_files(tmp_path):
    log = str(tmp_path / "calls")
    cache = Cache(tmp_path / "c", ttl=0.2)
    a = cache.get("s3://b/a", Writer(10, log))
    cache.unpin("s3://b/a")
    b = cache.get("s3://b/b", Writer(10, log))
    time.sleep(0.3)
    cache.get("s3://b/a", Writer(10, log))  # expired: fetched again
    assert calls(pathlib.Path(log)) == 3
    assert cache.get("s3://b/b", Writer(10, log)) == b  # expired but pinned: a hit
    cache.unpin("s3://b/a")
    time.sleep(0.3)
    assert cache.trim() == 10 and not a.exists() and b.exists()  # b still pinned
    cache.unpin("s3://b/b")
    cache.unpin("s3://b/b")
    assert cache.trim() == 10 and not b.exists()
    cache.close()


def simulate(root: pathlib.Path, policy: str, epochs: int = 4, n: int = 200) -> list[float]:
    """Read ``n`` files of random sizes in a new random order each epoch through a cache of
    25% of the bytes; returns the fraction of bytes that hit, per epoch."""
    rng = random.Random(1234)
    files = [(f"s3://data/{i:05d}.tar", rng.randint(1000, 10_000)) for i in range(n)]
    budget = sum(s for _, s in files) // 4
    fractions = []
    with Cache(root, max_bytes=budget, policy=policy) as cache:
        for epoch in range(epochs):
            order = random.Random(epoch).sample(files, n)
            hit = 0
            for url, size in order:
                fetch = Writer(size)
                with cache.pinned(url, fetch, size_hint=size):
                    pass
                hit += 0 if fetch.calls else size
            fractions.append(hit / sum(s for _, s in files))
            assert cache.stats()["bytes"] <= budget
            if policy == "keepset":  # kept: mostly the lowest-ranked files that fit
                by_rank = sorted(files, key=lambda f: rank_for(cpaths.key_for(f[0])))
                total, lowest = 0, set()
                for url, size in by_rank:
                    total += size
                    if total > budget:
                        break
                    lowest.add(url)
                kept = [(u, s) for u, s in files if cache.path_for(u).exists()]
                in_lowest = sum(s for u, s in kept if u in lowest)
                assert in_lowest >= 0.8 * sum(s for _, s in kept), (epoch, in_lowest)
    return fractions


def test_keepset_beats_lru_on_shuffled_epochs(tmp_path):
    keepset = simulate(tmp_path / "keepset", "keepset")
    lru = simulate(tmp_path / "lru", "lru")
    assert keepset[0] == lru[0] == 0.0
    assert min(keepset[1:]) >= 0.2, keepset
    assert max(lru[1:]) < min(keepset[1:]), (keepset, lru)


@pytest.mark.parametrize(
    "url",
    [
        "s3://b/../../etc/passwd",
        "file:///../../../../etc/shadow",
        "http://h/%2e%2e/%2e%2e/x.tar",
        "gs://b/a/..\\..\\x",
        "../../../x.jpg",
        "/etc/passwd",
        "http://h/a.tar/../../../../b.",
        "http://[::1/broken",
        "s3://b/\x00/..",
    ],
)
def test_no_url_escapes_the_cache_dir(tmp_path, url):
    root = tmp_path / "c"
    with Cache(root) as cache:
        path = cache.path_for(url)
        assert path.parent.parent == root and path.resolve().is_relative_to(root.resolve())
        assert cpaths.parse_file(path.name) == cpaths.key_for(url)
        assert cache.get(url, Writer(5)) == path and path.is_file()


def test_extension_kept_only_when_safe(tmp_path):
    cache = Cache(tmp_path)
    assert cache.path_for("s3://b/x.tar.gz?v=1#f").suffix == ".gz"
    assert cache.path_for("s3://b/x.waytoolongext").suffix == ""
    assert cache.path_for("s3://b/a.d/file").suffix == ""
    assert cache.path_for("s3://b/x.j-g").suffix == ""


def test_pickle_and_fork(tmp_path):
    cache = Cache(tmp_path, max_bytes=10_000, ttl=60, policy="lru")
    cache.get("s3://b/a", Writer(10))
    copy = pickle.loads(pickle.dumps(cache))
    assert repr(copy) == repr(cache) and copy.policy is EvictionPolicy.LRU
    assert copy.get("s3://b/a", Writer(10, str(tmp_path / "calls"))).exists()
    assert calls(tmp_path / "calls") == 0
    child = multiprocessing.get_context("fork").Process(
        target=_forked_get, args=(cache, "s3://b/forked")
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    log = tmp_path / "calls"
    assert cache.get("s3://b/forked", Writer(300, str(log))).stat().st_size == 300
    assert calls(log) == 0 and cache.stats()["pinned_files"] == 2
    copy.close()
    cache.close()


def test_budget_too_small_warns_once(tmp_path, caplog):
    cache = Cache(tmp_path, max_bytes=1000)
    with caplog.at_level(logging.WARNING, logger="sdsnodes.cache"):
        for i in range(3):
            cache.get(f"s3://b/{i}", Writer(800), size_hint=800)
    assert sum("budget too small" in r.getMessage() for r in caplog.records) == 1
    assert on_disk(tmp_path)[0] == 2400  # all pinned: nothing could go
    cache.close()  # releases the pins
    assert Cache(tmp_path, max_bytes=1000).trim() == 1600


def test_clean_keeps_pinned_files(tmp_path):
    cache = Cache(tmp_path)
    for i in range(5):
        with cache.pinned(f"s3://b/{i}", Writer(100)):
            pass
    kept = cache.get("s3://b/kept", Writer(7))
    assert cache.clean() == 500
    assert kept.exists() and cache.stats()["files"] == 1 and on_disk(tmp_path) == (7, 0)
    cache.close()


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        Cache(tmp_path, max_bytes=-1)
    with pytest.raises(ValueError, match="ttl"):
        Cache(tmp_path, ttl=0)
    with pytest.raises(ValueError, match="policy"):
        Cache(tmp_path, policy="fifo")
    with pytest.raises(ValueError, match="size_hint"):
        Cache(tmp_path).get("s3://b/x", Writer(1), size_hint=-5)


def test_cache_package_imports_only_the_standard_library_filelock_and_psutil():
    # filelock and psutil: portable locks and process liveness (no fcntl on Windows, no /proc
    # on macOS); nothing else, so the cache stays usable without torch or fsspec
    import ast
    import sys

    import sdsnodes.cache

    for source in pathlib.Path(sdsnodes.cache.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in {"filelock", "psutil"}, (
                    source.name,
                    name,
                )
