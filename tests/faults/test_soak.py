"""Soak: four processes stream shuffled epochs through one cache directory whose budget is 20%
of the data, for ``scaled(60, 600)`` seconds (issue 10, suite item 4).

Each process is this file run as a script (``python test_soak.py CONFIG.json RANK``): a
``torchdata.nodes.Loader`` over ``build_image_graph`` of images served by the loopback HTTP
server (index with a ``size`` column), its own shuffle seed, epoch after epoch until its time is
up. At every epoch's end it records its open descriptors (files and sockets apart) and threads;
every second its sample count. Meanwhile the test samples:

- the bytes of the cache directory's media files (``.tmp`` downloads included) every 10 ms,
  the ledger and its WAL/SHM apart (they are not in ``max_bytes``);
- every process's RSS (psutil) every 0.5 s.

Asserted: peak media bytes <= ``max_bytes`` + one (largest) file per process; RSS growth after
warm-up (a third of each process's run) < 5% in every process; no descriptor (other than
sockets, whose number follows the open HTTP connections) or thread more at the last epoch ends
than at the first ones after warm-up; the ledger clean at the end. Throughput per interval is
printed, not asserted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- a soak process
def _descriptors() -> dict[str, int]:
    """This process's open descriptors by kind: ``files`` (paths; ``ledger``: those of the
    cache's ledger, its WAL and SHM, among them), ``sockets``, ``other``."""
    counts = {"files": 0, "ledger": 0, "sockets": 0, "other": 0}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used, closed since
        kind = (
            "sockets"
            if target.startswith("socket:")
            else "files"
            if target.startswith("/")
            else "other"
        )
        counts[kind] += 1
        counts["ledger"] += "/ledger.sqlite" in target
    return counts


def _resources() -> dict[str, int]:
    return {
        **_descriptors(),
        "threads": threading.active_count(),
        "native_threads": len(os.listdir("/proc/self/task")),
    }


def run_soak_process(config_path: str, rank: int) -> int:
    """Stream shuffled epochs until ``duration_s`` passed; write a JSON report."""
    import gc
    import warnings

    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    from torchdata.nodes import Loader

    from sdsnodes import CacheOptions, FetchOptions, build_image_graph, error_stats
    from sdsnodes.nodes.graph import shutdown

    cfg = json.loads(Path(config_path).read_text())
    out = Path(cfg["out"]) / f"proc{rank}.json"
    before = _resources()
    graph = build_image_graph(
        cfg["src"], size=32, batch_size=8,
        cache=CacheOptions(cfg["cache_dir"], max_bytes=cfg["max_bytes"]), seed=rank, num_threads=2,
        fetch=FetchOptions(max_in_flight=cfg["download_threads"]),
    )  # fmt: skip
    loader = Loader(graph)
    start = time.monotonic()
    deadline = start + cfg["duration_s"]
    samples, ticks, epochs = 0, [], []
    next_tick = start + 1.0
    while time.monotonic() < deadline:
        for batch in loader:
            samples += len(batch["__key__"])
            now = time.monotonic()
            if now >= next_tick:
                ticks.append((round(now - start, 3), samples))
                next_tick = now + 1.0
            if now >= deadline:
                break
        else:
            epochs.append({"t": round(time.monotonic() - start, 3), **_resources()})
    errors = error_stats(loader.state_dict())
    shutdown(graph)
    del loader, graph
    gc.collect()
    report = {
        "pid": os.getpid(), "samples": samples, "ticks": ticks, "epochs": epochs,
        "before": before, "after_shutdown": _resources(), "errors": errors,
        "seconds": time.monotonic() - start, "start": start, "deadline": deadline,
    }  # fmt: skip
    out.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_soak_process(sys.argv[1], int(sys.argv[2])))


# ----------------------------------------------------------------------------------- the test
import random  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402

import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _faults import SEED, scaled  # noqa: E402

from sdsnodes._synthetic import write_image  # noqa: E402

PROCESSES = 4
NUM_IMAGES = 160
LEDGER_FILES = ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm")


class DiskSampler(threading.Thread):
    """Samples the cache directory every ``period_s``: media bytes (cached files and ``.tmp``
    downloads in its ``<2 hex>/`` folders) and the ledger's bytes (database, WAL, SHM)."""

    def __init__(self, cache_dir: Path, period_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.cache_dir, self.period_s = cache_dir, period_s
        self.peak_media = self.peak_ledger = self.peak_wal = self.samples = 0
        self.stop = threading.Event()

    def _scan(self) -> tuple[int, int, int]:
        media = ledger = wal = 0
        try:
            with os.scandir(self.cache_dir) as it:
                top = list(it)
        except FileNotFoundError:
            return 0, 0, 0
        for entry in top:
            try:
                if entry.name in LEDGER_FILES:
                    size = entry.stat().st_size
                    ledger += size
                    wal += size if entry.name.endswith("-wal") else 0
                elif len(entry.name) == 2 and entry.is_dir():
                    with os.scandir(entry.path) as files:
                        for f in files:
                            try:
                                media += f.stat().st_size
                            except FileNotFoundError:
                                pass  # evicted or renamed meanwhile
            except FileNotFoundError:
                pass
        return media, ledger, wal

    def run(self) -> None:
        while not self.stop.is_set():
            media, ledger, wal = self._scan()
            self.peak_media = max(self.peak_media, media)
            self.peak_ledger = max(self.peak_ledger, ledger)
            self.peak_wal = max(self.peak_wal, wal)
            self.samples += 1
            self.stop.wait(self.period_s)


def _rss_growth(
    series: list[tuple[float, int]], settled: float, end: float, window_s: float
) -> float:
    """Median RSS of the last ``window_s`` before ``end`` over the median of the first
    ``window_s`` after ``settled`` (times: ``time.monotonic()``, the same in every process),
    minus 1."""
    series = [(t, r) for t, r in series if r > 0]  # a zombie's RSS reads 0
    first = [r for t, r in series if settled <= t < settled + window_s]
    last = [r for t, r in series if end - window_s <= t <= end]
    return statistics.median(last) / statistics.median(first) - 1.0


def test_four_processes_soak_one_cache_within_budget_without_leaks(http_dir, tmp_path):
    rng = random.Random(SEED)
    sizes = []
    for i in range(NUM_IMAGES):
        path = http_dir.path / f"s{i:03d}.jpg"
        write_image(path, width=64 + i % 32, height=48, seed=i)
        path.write_bytes(path.read_bytes() + rng.randbytes(rng.randrange(30_000, 70_000)))
        sizes.append(path.stat().st_size)
    urls = [http_dir.url_for(f"s{i:03d}.jpg") for i in range(NUM_IMAGES)]
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"image": urls, "caption": [""] * NUM_IMAGES, "size": sizes}), index)
    max_bytes = sum(sizes) // 5
    bound = max_bytes + PROCESSES * max(sizes)
    duration = scaled(40, 600)
    warmup = max(15.0, duration / 3)  # after each process's first batch (RSS settles in ~15 s here)
    cache_dir = tmp_path / "cache"
    config = tmp_path / "soak.json"
    config.write_text(json.dumps({
        "src": str(index), "cache_dir": str(cache_dir), "max_bytes": max_bytes,
        "duration_s": duration, "download_threads": 4, "out": str(tmp_path),
    }))  # fmt: skip

    sampler = DiskSampler(cache_dir)
    sampler.start()
    logs = [open(tmp_path / f"proc{rank}.log", "wb") for rank in range(PROCESSES)]  # noqa: SIM115
    procs = [  # output to files, not pipes: a full pipe nobody reads would stall a process
        subprocess.Popen(
            [sys.executable, str(HERE / "test_soak.py"), str(config), str(rank)],
            cwd=HERE,
            stdout=logs[rank],
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for rank in range(PROCESSES)
    ]
    handles = {p.pid: psutil.Process(p.pid) for p in procs}
    rss: dict[int, list[tuple[float, int]]] = {pid: [] for pid in handles}
    t0 = time.monotonic()
    try:
        while any(p.poll() is None for p in procs):
            assert time.monotonic() - t0 < duration + 300, "the soak processes hang"
            now = time.monotonic()
            for pid, handle in handles.items():
                try:
                    rss[pid].append((now, handle.memory_info().rss))
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        sampler.stop.set()
        sampler.join()
    for p, log in zip(procs, logs):
        p.wait()
        log.close()
        assert p.returncode == 0, Path(log.name).read_text(errors="replace")[-3000:]
    reports = [json.loads((tmp_path / f"proc{r}.json").read_text()) for r in range(PROCESSES)]

    # throughput per interval (all processes together), printed
    interval = duration / 6
    edges = [interval * k for k in range(7)]
    rates = []
    for lo, hi in zip(edges, edges[1:]):
        n = 0
        for rep in reports:
            at = dict([(0.0, 0)] + [(t, s) for t, s in rep["ticks"]])
            times = sorted(at)
            below = max((t for t in times if t <= lo), default=0.0)
            upto = max((t for t in times if t <= hi), default=0.0)
            n += at[upto] - at[below]
        rates.append(n / interval)
    total = sum(rep["samples"] for rep in reports)

    # RSS of each process: growth from just after warm-up to the end
    window = max(5.0, duration / 10)
    growth = {
        rep["pid"]: _rss_growth(rss[rep["pid"]], rep["start"] + warmup, rep["deadline"], window)
        for rep in reports
    }

    # leaks: resources at the first epoch end after warm-up against the last epoch end
    leaks, details = 0, []
    for rep in reports:
        settled = [e for e in rep["epochs"] if e["t"] >= warmup]
        assert len(settled) >= 2, f"too few epochs after warm-up to compare: {rep['epochs']}"
        first, last = settled[0], settled[-1]
        # a leak grows: the fewest of the last k epoch ends above the most of the first k (a
        # thread still exiting at one epoch's end is no leak)
        k = max(1, min(3, len(settled) // 3))
        first_k, middle_k, last_k = settled[:k], settled[len(settled) // 2 :][:k], settled[-k:]

        def grew(kind, before, after):
            return max(0, min(e[kind] for e in after) - max(e[kind] for e in before))

        for kind in ("files", "other", "threads"):
            leaks += grew(kind, first_k, last_k)
        # native threads also count pools that libraries (OpenMP, codecs) start lazily, once, at
        # any point of the run: a leak of them keeps growing, in both halves of the run
        leaks += min(
            grew("native_threads", first_k, middle_k), grew("native_threads", middle_k, last_k)
        )
        details.append(
            f"pid {rep['pid']}: {len(rep['epochs'])} epochs, fds {first['files']}→{last['files']} "
            f"(ledger {first['ledger']}→{last['ledger']}), "
            f"sockets {first['sockets']}→{last['sockets']}, threads {first['threads']}→"
            f"{last['threads']} (native {first['native_threads']}→{last['native_threads']}); "
            f"before the graph {rep['before']}, after its shutdown {rep['after_shutdown']}"
        )

    conn = sqlite3.connect(cache_dir / "ledger.sqlite", timeout=30)
    pins = conn.execute("SELECT count(*) FROM pins").fetchone()[0]
    reserved = conn.execute("SELECT count(*) FROM files WHERE state != 'ready'").fetchone()[0]
    conn.close()

    ratio = sampler.peak_media / bound
    worst = max(growth.values())
    print(
        f"FIGURE soak: peak/bound {ratio:.2f} (peak/max_bytes {sampler.peak_media / max_bytes:.2f}),"
        f" RSS growth {100 * worst:.1f}%, leaks {leaks}"
        f" ({PROCESSES} processes, {duration:.0f} s, {total / duration:.0f} samples/s)"
    )
    print(
        f"  max_bytes {max_bytes} B, bound {bound} B (+{PROCESSES} x {max(sizes)} B), peak media "
        f"{sampler.peak_media} B; ledger apart (not in the budget): peak {sampler.peak_ledger} B "
        f"with WAL and SHM, the WAL's peak {sampler.peak_wal} B; {sampler.samples} disk samples"
    )
    per_interval = ", ".join(f"{r:.0f}" for r in rates)
    print(f"  samples/s per interval of {interval:.0f} s: {per_interval}")
    print(
        "  RSS per process (MiB, every tenth of the run): "
        + "; ".join(
            " ".join(f"{r / 2**20:.0f}" for _, r in series[:: max(1, len(series) // 10)])
            + f" ({100 * growth[pid]:+.1f}%)"
            for pid, series in rss.items()
        )
    )
    for line in details:
        print("  " + line)
    print(f"  errors {[rep['errors'] for rep in reports]}")

    assert all(rep["errors"] == {} for rep in reports), [rep["errors"] for rep in reports]
    assert pins == 0 and reserved == 0, f"the ledger keeps {pins} pins, {reserved} reservations"
    assert sampler.peak_media <= bound, (
        f"peak disk {sampler.peak_media} B > max_bytes {max_bytes} B + one file per process "
        f"({bound} B): {ratio:.2f}x the bound"
    )
    assert leaks == 0, details
    assert worst < 0.05, f"RSS grew {100 * worst:.1f}% after warm-up: {growth}"


def test_threads_that_end_leave_no_ledger_connection_open(tmp_path):
    """The leak the soak finds, in one process: every thread that touches the cache opens a
    ledger connection (2 descriptors: the database and its WAL); a graph's thread pools are
    new each epoch, so a connection kept after its thread ended is an fd leak per epoch (and
    "too many open files" after a few hundred epochs under ``ulimit -n 1024``)."""
    from sdsnodes.cache import Cache

    url = "https://example.invalid/a.bin"  # never fetched: written by the lambda
    with Cache(tmp_path / "cache") as cache:

        def use() -> None:
            cache.get(url, lambda tmp: tmp.write_bytes(b"x" * 10))
            cache.unpin(url)

        use()
        before = _descriptors()["ledger"]
        for _ in range(20):
            thread = threading.Thread(target=use)
            thread.start()
            thread.join()
        after = _descriptors()["ledger"]
    print(f"  ledger descriptors: {before} before, {after} after 20 threads that ended")
    assert after <= before + 2, f"{after - before} ledger descriptors left by 20 ended threads"
