"""Peak disk use of a shared cache directory under a small budget, with 4 worker processes.

The promise (docs of :class:`sdsnodes.cache.Cache`): the directory never holds more than
``max_bytes`` plus the largest single file in flight. Measured here: a graph
``IndexReader → Shuffler → CachingDownloader(max_bytes) → Evictor`` in ``StreamingDataset``, read by
``StatefulDataLoader(num_workers=4, persistent_workers=True)`` for ``--epochs`` epochs (4
processes sharing one cache directory), downloading ``--num-files`` files of random bytes (sizes
log-uniform in [``--min-kb``, ``--max-kb``]) from the aiohttp test server on 127.0.0.1.

A sampler thread in this process walks the cache directory every ``--interval-ms`` and sums the
sizes of every file in it — cached files and ``*.tmp`` downloads in progress — except the SQLite
ledger (``ledger.sqlite`` and its ``-wal`` / ``-shm``) and the lock files, which are reported
separately. At each new peak it also reads the ledger's ``pinned_bytes`` (ready files pinned by
the workers: downloaded, not yet consumed). Printed per budget (``--max-mb``, one or more): the
peak, ``max_bytes``, the largest file of the dataset (an upper bound of the largest file in
flight) and ``peak / (max_bytes + largest)``, which the promise keeps <= 1.00; medians over the
repeats, with min and max. The sampler starts once the workers are forked (persistent workers, so
no later fork): a fork while a thread of this process is inside SQLite leaves SQLite's global
locks held in the child, which then hangs at its first ledger access.

The default budgets are one the in-flight windows fit in and one they do not: each worker keeps up
to ``--download-threads`` files downloading or downloaded-but-not-yet-consumed, all pinned, and
pinned files cannot be evicted. CachingDownloader starts a download only when it fits the budget
next to what is pinned, except the one its consumer waits for: with a tight budget the
directory may exceed ``max_bytes`` by one file per worker at most.

A second table (``--cases read-ahead``, issue 10) runs the cases where the bound used to break:
``IndexReader → CachingDownloader → Decoder(ImageTensor) → Evictor`` over ~200 KiB PNGs of
random pixels with a 1 MiB budget, a consumer that pauses ``--step-ms`` per sample (as a training
step does, so the Decoder's read-ahead of 2 samples per decode thread stays full), and one row per
case: no ``size`` column with 8 and 32 download threads (the first window knows no size), a size
column with 4 and 8 decode threads, and 6 worker processes. Each row prints the peak against
``max_bytes`` and against the bound ``max_bytes + processes × largest file``, the ledger apart.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import Result, add_common_args, default_data_dir, repeats_of, write_json
from benchmarks.bench_remote import import_servers, silence_worker_warnings

NAME = "disk_peak"
DESCRIPTION = (
    "peak disk use of the shared cache dir with 4 DataLoader workers and a small budget, "
    "sampled every few ms, against max_bytes + the largest file in flight"
)

LEDGER_PREFIX = "ledger.sqlite"
LOCKS_DIR = ".locks"


class DiskSampler:
    """A thread summing the file sizes in a cache directory every ``interval_s``: the data
    (cached files and ``*.tmp``) and, apart, the ledger; it keeps the peaks, and at each new
    peak of the data asks ``pinned()`` for the bytes pinned then."""

    def __init__(self, root: str, interval_s: float, pinned) -> None:
        self.root, self.interval_s, self.pinned = root, interval_s, pinned
        self.peak = self.peak_ledger = self.peak_tmp = self.peak_tmp_files = 0
        self.peak_pinned = self.peak_wal = self.samples = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int, int, int, int]:
        """(data bytes, ledger bytes, of them the ``-wal``'s, ``*.tmp`` bytes, ``*.tmp`` files)."""
        data = ledger = wal = tmp = tmp_files = 0
        for top, dirs, files in os.walk(self.root):
            if top == self.root and LOCKS_DIR in dirs:
                dirs.remove(LOCKS_DIR)
            for name in files:
                try:
                    size = os.stat(os.path.join(top, name)).st_size
                except FileNotFoundError:  # evicted or renamed meanwhile
                    continue
                if top == self.root and name.startswith(LEDGER_PREFIX):
                    ledger += size
                    wal += size if name.endswith("-wal") else 0
                    continue
                data += size
                if name.endswith(".tmp"):
                    tmp, tmp_files = tmp + size, tmp_files + 1
        return data, ledger, wal, tmp, tmp_files

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            data, ledger, wal, tmp, tmp_files = self.sample()
            self.samples += 1
            if data > self.peak:
                self.peak, self.peak_tmp, self.peak_tmp_files = data, tmp, tmp_files
                try:
                    self.peak_pinned = self.pinned()
                except Exception:  # noqa: BLE001 - the ledger was busy: keep the last figure
                    pass
            self.peak_ledger = max(self.peak_ledger, ledger)
            self.peak_wal = max(self.peak_wal, wal)
            self._stop.wait(self.interval_s)
        self.seconds = time.perf_counter() - start

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def peak_graph(table, cache_dir: str, max_bytes: int, threads: int, seed: int):
    """``IndexReader → Shuffler → CachingDownloader(max_bytes) → Evictor``."""
    from sdsnodes import CachingDownloader, Evictor, IndexReader, Shuffler
    from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions

    downloader = CachingDownloader(
        Shuffler(IndexReader(table), seed=seed), ["file"],
        cache=CacheOptions(cache_dir, max_bytes=max_bytes),
        fetch=FetchOptions(max_in_flight=threads), errors=ErrorOptions(on_error="raise"),
    )  # fmt: skip
    return Evictor(downloader)


def pinned_bytes(cache) -> int:
    """Bytes of the ready files that live processes pin, from the ledger."""
    return cache.stats()["pinned_bytes"]


def run_once(table, max_bytes: int, seed: int, args, workdir: Path) -> dict[str, Any]:
    """``args.epochs`` epochs on a fresh cache directory, sampled; the peaks and the ledger."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import StreamingDataset
    from sdsnodes.cache import Cache

    cache_dir = tempfile.mkdtemp(dir=workdir, prefix="cache-")
    factory = functools.partial(
        peak_graph, table, cache_dir, max_bytes, args.download_threads, seed
    )
    loader = StatefulDataLoader(
        StreamingDataset(factory), batch_size=None, num_workers=args.num_workers,
        persistent_workers=True,
    )  # fmt: skip
    try:
        with contextlib.ExitStack() as stack:
            start = time.perf_counter()
            for epoch in range(args.epochs):
                samples = iter(loader)  # epoch 0: forks the workers
                if epoch == 0:  # the sampler starts after the fork (see the module docstring)
                    cache = stack.enter_context(Cache(cache_dir))  # reads the ledger, pins nothing
                    sampler = stack.enter_context(
                        DiskSampler(
                            cache_dir,
                            args.interval_ms / 1000,
                            functools.partial(pinned_bytes, cache),
                        )
                    )
                n = sum(1 for _ in samples)
                if n != table.num_rows:
                    raise RuntimeError(f"an epoch delivered {n} samples, expected {table.num_rows}")
            seconds = time.perf_counter() - start
        data, ledger, *_ = sampler.sample()
    finally:
        del loader  # stops the persistent workers
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "peak": sampler.peak, "peak_tmp": sampler.peak_tmp, "peak_tmp_files": sampler.peak_tmp_files,
        "peak_pinned": sampler.peak_pinned, "peak_ledger": sampler.peak_ledger,
        "peak_wal": sampler.peak_wal, "final": data,
        "final_ledger": ledger, "samples": sampler.samples,
        "interval_ms": 1000 * sampler.seconds / max(1, sampler.samples), "seconds": seconds,
    }  # fmt: skip


READ_AHEAD_BUDGET = 1 << 20
READ_AHEAD_CASES = [  # (label, processes, size column, download threads, decode threads)
    ("1 process, no size column, 8 downloads", 1, False, 8, 4),
    ("1 process, no size column, 32 downloads", 1, False, 32, 4),
    ("1 process, size column, 4 decoders", 1, True, 16, 4),
    ("1 process, size column, 8 decoders", 1, True, 16, 8),
    ("6 processes, size column, 4 decoders", 6, True, 16, 4),
]


def read_ahead_graph(table, cache_dir: str, max_bytes: int, downloads: int, decoders: int):
    """``IndexReader → CachingDownloader(max_bytes) → Decoder(ImageTensor) → Evictor``."""
    from sdsnodes import CachingDownloader, Decoder, Evictor, ImageTensor, IndexReader
    from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions

    downloader = CachingDownloader(
        IndexReader(table), ["file"], cache=CacheOptions(cache_dir, max_bytes=max_bytes),
        fetch=FetchOptions(max_in_flight=downloads), errors=ErrorOptions(on_error="raise"),
    )  # fmt: skip
    return Evictor(Decoder(downloader, {"file": ImageTensor(size=32)}, num_threads=decoders))


def noise_pngs(server, workdir: Path, n: int, rng) -> tuple[list[str], list[int]]:
    """``n`` served PNGs of random pixels (incompressible, 180-200 KiB each)."""
    import io

    from PIL import Image

    urls, sizes = [], []
    for i in range(n):
        side = int(rng.integers(245, 258))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype="uint8")).save(buf, "PNG")
        path = server.root / "read-ahead" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        urls.append(server.url_for(path))
        sizes.append(len(buf.getvalue()))
    return urls, sizes


def run_read_ahead_case(table, case, args, workdir: Path) -> dict[str, Any]:
    """One epoch of one case on a fresh cache directory, sampled from before the first sample."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import StreamingDataset

    _, processes, _, downloads, decoders = case
    cache_dir = tempfile.mkdtemp(dir=workdir, prefix="cache-")
    factory = functools.partial(
        read_ahead_graph, table, cache_dir, READ_AHEAD_BUDGET, downloads, decoders
    )
    workers = 0 if processes == 1 else processes
    loader = StatefulDataLoader(StreamingDataset(factory), batch_size=None, num_workers=workers)
    try:
        sampler = DiskSampler(cache_dir, args.interval_ms / 1000, lambda: 0)
        with sampler:  # walks the directory only (no SQLite in this process across the fork)
            n, start = 0, time.perf_counter()
            for _ in loader:
                n += 1
                time.sleep(args.step_ms / 1000)
            seconds = time.perf_counter() - start
        if n != table.num_rows:
            raise RuntimeError(f"an epoch delivered {n} samples, expected {table.num_rows}")
    finally:
        del loader
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "peak": sampler.peak, "peak_ledger": sampler.peak_ledger, "peak_wal": sampler.peak_wal,
        "seconds": seconds,
    }  # fmt: skip


def read_ahead_table(args, servers, workdir: Path, repeats: int) -> None:
    """The issue-10 cases (see the module docstring): one row per case, medians of repeats."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(1)
    n = 40 if args.quick else 120
    cases = READ_AHEAD_CASES[1::2] if args.quick else READ_AHEAD_CASES
    with servers.http.HTTPServer(root=workdir / "served-read-ahead") as server:
        urls, sizes = noise_pngs(server, workdir, n, rng)
        largest = max(sizes)
        print(
            f"read-ahead cases: {n} PNGs of {min(sizes) / 1024:.0f}-{largest / 1024:.0f} KiB over "
            f"HTTP, max_bytes {READ_AHEAD_BUDGET / 2**20:g} MiB, consumer step {args.step_ms:g} ms "
            f"per sample, sampled every {args.interval_ms:g} ms; {repeats} repeat(s)",
            flush=True,
        )
        runs: dict[str, list[dict[str, Any]]] = {case[0]: [] for case in cases}
        for repeat in range(repeats):
            for case in cases:
                label, _, with_size, *_ = case
                columns = {"file": urls, **({"size": sizes} if with_size else {})}
                run = run_read_ahead_case(pa.table(columns), case, args, workdir)
                runs[label].append(run)
                print(
                    f"  repeat {repeat + 1}/{repeats}, {label}: peak {run['peak'] / 2**20:.2f} MiB",
                    flush=True,
                )
    print()
    width = max(len(case[0]) for case in cases)
    head = (
        f"{'case':<{width}}  {'peak MiB':>8}  {'peak/max_bytes':>14}  {'bound MiB':>9}  "
        f"{'peak/bound (min-max)':>20}  {'ledger+wal KiB':>14}  {'of it wal':>9}  "
        f"{'epoch s':>7}"
    )
    print(f"disk_peak read-ahead: max_bytes {READ_AHEAD_BUDGET / 2**20:g} MiB; bound = max_bytes "
          "+ processes x largest file; medians over the repeats")  # fmt: skip
    print(head + "\n" + "-" * len(head))
    for label, _, *_ in cases:
        processes = next(c[1] for c in cases if c[0] == label)
        bound = READ_AHEAD_BUDGET + processes * largest
        peaks = [r["peak"] for r in runs[label]]
        ratios = [p / bound for p in peaks]
        peak = statistics.median(peaks)
        ledger = statistics.median(r["peak_ledger"] for r in runs[label]) / 1024
        wal = statistics.median(r["peak_wal"] for r in runs[label]) / 1024
        spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        seconds = statistics.median(r["seconds"] for r in runs[label])
        print(
            f"{label:<{width}}  {peak / 2**20:>8.2f}  {peak / READ_AHEAD_BUDGET:>14.2f}  "
            f"{bound / 2**20:>9.2f}  {spread:>20}  {ledger:>14.0f}  {wal:>9.0f}  {seconds:>7.2f}"
        )
    floor = n * args.step_ms / 1000
    print(f"epoch s: the consumer's own pauses take {floor:.2f} s; more is time it waited")
    print()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=3)
    add = parser.add_argument
    add(
        "--num-files",
        type=int,
        default=None,
        help="files in the dataset (default 300, 80 with --quick)",
    )
    add("--min-kb", type=float, default=16.0, help="smallest file in KB (default 16)")
    add("--max-kb", type=float, default=1024.0, help="largest file in KB (default 1024)")
    add(
        "--max-mb", type=float, nargs="+", default=None,
        help="cache budgets max_bytes in MB, one run each (default 32 8; 8 2 with --quick)",
    )  # fmt: skip
    add("--epochs", type=int, default=2, help="epochs per repeat (default 2)")
    add("--num-workers", type=int, default=4, help="DataLoader workers (default 4)")
    add(
        "--download-threads",
        type=int,
        default=8,
        help="CachingDownloader threads per worker (default 8, its default)",
    )
    add("--interval-ms", type=float, default=2.0, help="sampling interval in ms (default 2)")
    add(
        "--cases", nargs="+", choices=["budgets", "read-ahead"], default=["budgets", "read-ahead"],
        help="tables to run: the budgets with 4 workers, and the read-ahead cases of issue 10",
    )  # fmt: skip
    add(
        "--step-ms", type=float, default=20.0,
        help="read-ahead cases: the consumer's pause per sample in ms (default 20)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.num_files = args.num_files or (80 if args.quick else 300)
    args.max_mb = args.max_mb or ([8.0, 2.0] if args.quick else [32.0, 8.0])
    if not 0 < args.min_kb <= args.max_kb:
        parser.error("--min-kb must be > 0 and <= --max-kb")
    for name in ("num_files", "epochs", "num_workers", "download_threads", "interval_ms"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if min(args.max_mb) <= 0:
        parser.error("--max-mb values must be > 0")
    return args


def print_table(
    budget_runs: dict[int, list[dict[str, Any]]], largest: int, workers: int
) -> list[Result]:
    """One column block per budget: medians (min, max) over the repeats; the ratio rows."""
    results = []
    budgets = list(budget_runs)
    label_width = 40
    head = f"{'':<{label_width}}" + "".join(
        f"  {f'max_bytes {b / 1e6:g} MB: median (min-max)':>36}" for b in budgets
    )
    print(f"disk_peak: bytes in the cache directory, {workers} worker processes sharing it")
    print(head + "\n" + "-" * len(head))

    def cell(values: list[float], digits: int) -> str:
        median = statistics.median(values)
        return f"  {f'{median:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})':>36}"

    def row(label: str, fn, digits: int = 3) -> None:
        cells = "".join(cell([fn(r, b) for r in budget_runs[b]], digits) for b in budgets)
        print(f"{label:<{label_width}}{cells}")

    row("peak (cached files + *.tmp), MB", lambda r, b: r["peak"] / 1e6)
    row("  of it *.tmp at the peak, MB", lambda r, b: r["peak_tmp"] / 1e6)
    row("  of it pinned at the peak (ledger), MB", lambda r, b: r["peak_pinned"] / 1e6)
    row("max_bytes, MB", lambda r, b: b / 1e6)
    row("largest file, MB", lambda r, b: largest / 1e6)
    row("ratio peak / (max_bytes + largest)", lambda r, b: r["peak"] / (b + largest))
    row("ratio peak / max_bytes", lambda r, b: r["peak"] / b)
    row("ledger peak (sqlite + wal + shm), KB", lambda r, b: r["peak_ledger"] / 1e3, 0)
    row("  of it the -wal file (peak), KB", lambda r, b: r["peak_wal"] / 1e3, 0)
    row("ledger after the last epoch, KB", lambda r, b: r["final_ledger"] / 1e3, 0)
    row("sampling interval achieved, ms", lambda r, b: r["interval_ms"], 1)
    print(
        "medians over the repeats (min-max); the largest file of the dataset bounds the largest in flight"
    )
    print()
    for b in budgets:
        ratios = [r["peak"] / (b + largest) for r in budget_runs[b]]
        results.append(
            Result(f"max_bytes {b / 1e6:g} MB", ratios, unit="peak / (max_bytes + largest)")
        )
        worst = max(ratios)
        print(
            f"bound (printed, not enforced) at max_bytes {b / 1e6:g} MB: peak <= max_bytes + "
            f"largest file, ratio <= 1.00: worst repeat {worst:.3f} — {'held' if worst <= 1.0 else 'EXCEEDED'}"
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    silence_worker_warnings()
    args = parse(argv)
    import numpy as np
    import pyarrow as pa
    import torchdata.stateful_dataloader  # noqa: F401

    repeats = repeats_of(args)
    servers = import_servers()
    data_dir = args.dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=data_dir, prefix="disk-peak-run-"))
    rng = np.random.default_rng(0)
    lo, hi = np.log(args.min_kb * 1000), np.log(args.max_kb * 1000)
    sizes = np.exp(rng.uniform(lo, hi, args.num_files)).astype("int64")
    largest = int(sizes.max())
    budget_runs: dict[int, list[dict[str, Any]]] = {int(mb * 1e6): [] for mb in args.max_mb}
    try:
        if "read-ahead" in args.cases:
            read_ahead_table(args, servers, workdir, repeats)
        if "budgets" not in args.cases:
            return 0
        with servers.http.HTTPServer(root=workdir / "served") as server:
            urls = []
            for i, size in enumerate(sizes):
                path = server.root / "peak" / f"{i:05d}.bin"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(rng.bytes(int(size)))
                urls.append(server.url_for(path))
            table = pa.table({"file": urls, "size": sizes})
            window = args.num_workers * args.download_threads
            print(
                f"aiohttp HTTP server on 127.0.0.1: {args.num_files} files of {args.min_kb:g}-"
                f"{args.max_kb:g} KB (log-uniform), {sizes.sum() / 1e6:.1f} MB, largest "
                f"{largest / 1e6:.3f} MB; {args.num_workers} workers x {args.download_threads} "
                f"download threads: up to {window} files pinned in flight, "
                f"{window * sizes.mean() / 1e6:.1f} MB at the mean size; {args.epochs} epochs per "
                f"repeat; sampled every {args.interval_ms:g} ms; {repeats} repeat(s)",
                flush=True,
            )
            for repeat in range(repeats):
                for max_bytes, runs in budget_runs.items():
                    run = run_once(table, max_bytes, repeat, args, workdir)
                    runs.append(run)
                    print(
                        f"  repeat {repeat + 1}/{repeats}, max_bytes {max_bytes / 1e6:g} MB: peak "
                        f"{run['peak'] / 1e6:.3f} MB = {run['peak'] / (max_bytes + largest):.3f} of "
                        f"the bound ({run['peak_tmp_files']} *.tmp of {run['peak_tmp'] / 1e6:.3f} MB, "
                        f"{run['peak_pinned'] / 1e6:.3f} MB pinned); ledger peak "
                        f"{run['peak_ledger'] / 1e3:.0f} KB; {run['samples']} samples over "
                        f"{run['seconds']:.1f} s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    results = print_table(budget_runs, largest, args.num_workers)
    if args.json:
        config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        config.update(
            repeats=repeats, largest=largest, runs={str(b): r for b, r in budget_runs.items()}
        )
        print(f"wrote {write_json(NAME, results, config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
