"""Cold-cache samples/s from a real S3 server (moto, on 127.0.0.1): the sdsnodes graphs against a
sequential s3fs ``get_file`` loop and one bulk ``fs.cat(list)`` call over the same objects.

Data (uploaded once per run to a moto server started here):

- **images**: ``--num-images`` real JPEGs of ~100 KB (default 800, to keep the run near 2
  minutes; ``--num-images 2000`` for the issue's ~2,000): ``--image-side`` px of noise at quality
  90, the worst case for JPEG, so the bytes are what the decoder really reads;
  ``--distinct-images`` distinct files, each uploaded under several keys.
- **videos**: ``--num-videos`` (default 64) small real H.264 mp4 files of ``--video-seconds``
  (default 3 s), 256x192 px (``make_video_dataset``); the graph decodes 16-frame clips at 8 fps,
  64x64 px.

Loaders, each on a fresh, empty cache directory (every run is a cold cache):

- **sequential get_file loop** (*the baseline*): one s3fs filesystem (created and connected
  before timing), ``fs.get_file(url, local)`` for each object in turn, into local files.
- **bulk fs.cat(list)**: one ``fs.cat(urls)`` call on the same filesystem: fsspec's async batch
  (``gather_batch_size``, 128 requests in flight), bodies kept in memory: meant as the server's
  upper bound (download only).
- **download-only graph**: ``IndexReader → CachingDownloader → Evictor`` (no decoding), in this
  process through ``torchdata.nodes.Loader`` and through ``StatefulDataLoader(num_workers=2)``:
  apples to apples with the two baselines.
- **image / video graph**: ``build_image_graph`` / ``build_video_graph`` over the index of
  ``s3://`` URLs (download, decode, batch), through ``StatefulDataLoader(num_workers=2)`` and in
  this process through ``Loader``.

Rates are items/s over the whole epoch, from creating the loader (or filesystem) to its last item,
worker start-up included. The issue's targets (>= 3x the sequential loop, >= 0.8x the bulk call)
are printed beside the ratios, never enforced.

The CPU columns say why a target is out of reach: for each run the CPU time of the server process
(``/proc/<pid>/stat``) and of this process and its reaped DataLoader workers (``getrusage``),
per object; each graph's "CPU ceiling" is what the machine's cores could serve at that client +
server CPU per object if nothing else ran (decoding graphs pay for decoding there). On a loopback server nothing waits on the network, so a download costs CPU only: with
``c`` ms of client CPU and ``s`` ms of server CPU per object, N cores serve at most
``N * 1000 / (c + s)`` objects/s, and moto (one Python process) at most ``1000 / s``.

``--server http`` runs the same loaders against the aiohttp test server instead (``https``-like
fsspec ``HTTPFileSystem``), with ``--latency-ms`` of delay injected per request: the latency-bound
case of a real object store, where concurrency pays.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
    silence_known_warnings,
    write_json,
)

NAME = "remote"
DESCRIPTION = (
    "cold-cache samples/s from moto S3: image/video graphs (2 workers and in-process) and a "
    "download-only graph vs a sequential s3fs get_file loop and one bulk fs.cat(list)"
)

SEQ = "sequential get_file loop"
BULK = "bulk fs.cat(list) (upper bound)"
TARGET_SEQ = 3.0
TARGET_BULK = 0.8
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"


def import_servers() -> Any:
    """The ``servers`` package of ``tests/`` (real loopback servers), importable from here."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.append(str(TESTS_DIR))  # appended: nothing there may shadow an installed module
    import servers.http
    import servers.s3

    return servers


def silence_worker_warnings() -> None:
    """Also ignore torch's warning that more DataLoader workers than cores were asked for."""
    silence_known_warnings()
    warnings.filterwarnings(
        "ignore", message=r".*worker processes in total.*", category=UserWarning
    )


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and its reaped children (the DataLoader workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed epoch: items delivered, wall seconds (in all, and to the first item), CPU
    seconds of client and server."""

    items: int
    seconds: float
    first_seconds: float
    client_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def measure(fn: Callable[[Callable[[], None]], int], server_pid: int) -> Run:
    """Run ``fn(first)`` (returning the items it delivered; calling ``first()`` when the first
    arrives), timing it and counting CPU time."""
    marks: list[float] = []
    client, server = own_cpu(), process_cpu(server_pid)
    start = time.perf_counter()
    items = fn(lambda: marks.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    first = (marks[0] if marks else time.perf_counter()) - start
    return Run(items, seconds, first, own_cpu() - client, process_cpu(server_pid) - server)


# -- data -------------------------------------------------------------------------------------------


def noise_jpegs(count: int, side: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct real JPEGs (quality 90) of ``side`` x ``side`` px of RGB noise."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(count):
        pixels = np.random.default_rng((seed, i)).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)  # [H, W, 3] uint8 RGB
        out.append(buffer.getvalue())
    return out


def small_videos(root: Path, count: int, seconds: float) -> list[bytes]:
    """The bytes of ``count`` small real H.264 mp4 files (``make_video_dataset``, cached on disk;
    written in a subprocess, as ``bench_video`` does, so this process stays a training script's)."""
    import pyarrow.parquet as pq

    code = (
        "import sys; from sdsnodes._synthetic import make_video_dataset; "
        "print(make_video_dataset(sys.argv[1], num_videos=int(sys.argv[2]), "
        "seconds=float(sys.argv[3]), width=256, height=192))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(count), str(seconds)],
        stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    index = Path(done.stdout.strip().splitlines()[-1])
    return [
        Path(p).read_bytes() for p in pq.read_table(index, columns=["video"])["video"].to_pylist()
    ]


class Store:
    """The server the objects live on: moto's S3 or the aiohttp HTTP server, started here."""

    def __init__(self, kind: str, latency_ms: float) -> None:
        servers = import_servers()
        self.kind = kind
        self._fs = None
        if kind == "s3":
            os.environ.update(servers.s3.CLIENT_ENV)  # fake credentials; no metadata probing
            self.server = servers.s3.S3Server().start()
            self.server.make_bucket("bench")
        else:
            self.server = servers.http.HTTPServer().start()
            if latency_ms > 0:
                self.server.faults(delay_s=latency_ms / 1000, path="/")
        self.storage_options: dict[str, Any] = self.server.storage_options

    def describe(self) -> str:
        return "moto S3 server" if self.kind == "s3" else "aiohttp HTTP server"

    def upload(self, folder: str, blobs: Sequence[bytes], ext: str) -> list[str]:
        """Store ``blobs`` as ``<folder>/<i>.<ext>``; their URLs, in order."""
        names = [f"{folder}/{i:05d}.{ext}" for i in range(len(blobs))]
        if self.kind == "s3":
            self.server.fs().pipe({f"bench/{n}": b for n, b in zip(names, blobs)})
            return [f"s3://bench/{n}" for n in names]
        for name, blob in zip(names, blobs):
            path = self.server.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        return [self.server.url_for(n) for n in names]

    def fs(self):
        """The baselines' fsspec filesystem (made once, warmed up by :meth:`warm_up`)."""
        if self._fs is None:
            self._fs = self.server.fs()  # no instance cache: connections of its own
        return self._fs

    def warm_up(self, url: str) -> None:
        """Open the connections of the baselines' filesystem and of this process's graph
        filesystem (``sdsnodes.storage.filesystem``), so no loader pays for creating them in
        this process; DataLoader workers create theirs, every epoch, as in training."""
        from sdsnodes.storage import filesystem

        self.fs().info(url)
        fs, path = filesystem(url, self.storage_options)
        fs.info(path)

    @property
    def pid(self) -> int:
        return int(self.server.pid)

    def close(self) -> None:
        self.server.close()


# -- the loaders ------------------------------------------------------------------------------------


def sequential_get(
    store: Store, urls: Sequence[str], workdir: Path, first: Callable[[], None]
) -> int:
    """``fs.get_file`` of every object in turn into local files (the baseline)."""
    fs = store.fs()
    folder = Path(tempfile.mkdtemp(dir=workdir, prefix="seq-"))
    try:
        for i, url in enumerate(urls):
            fs.get_file(url, str(folder / f"{i:05d}"))
            if i == 0:
                first()
        return sum(1 for _ in folder.iterdir())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bulk_cat(store: Store, urls: Sequence[str], first: Callable[[], None]) -> int:
    """One ``fs.cat(urls)`` call; the bodies stay in memory.

    On S3 with ``max_concurrency=1``: else s3fs sends a HEAD before every GET (to decide whether
    to split a large object into concurrent ranges), two requests per object, and on a
    CPU-bound server the "upper bound" would run at half speed.
    """
    options = {"max_concurrency": 1} if store.kind == "s3" else {}
    bodies = store.fs().cat(list(urls), **options)
    first()  # every body arrives at once
    return sum(1 for body in bodies.values() if isinstance(body, bytes) and body)


def download_graph(table, column: str, cache_dir: str, storage_options: dict, num_threads: int):
    """``IndexReader → CachingDownloader → Evictor``: downloads only, one sample per row."""
    from sdsnodes import CachingDownloader, Evictor, IndexReader
    from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions

    downloader = CachingDownloader(
        IndexReader(table), [column], cache=CacheOptions(cache_dir),
        fetch=FetchOptions(storage_options=storage_options, max_in_flight=num_threads),
        errors=ErrorOptions(on_error="raise"),
    )  # fmt: skip
    return Evictor(downloader)


def media_graph(table, media: str, cache_dir: str, storage_options: dict, args, seed: int):
    """``build_image_graph`` / ``build_video_graph`` over the table of URLs, batches of dicts."""
    from sdsnodes import build_image_graph, build_video_graph
    from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions

    in_flight = args.download_threads or (16 if media == "images" else 8)  # the presets' default
    common = dict(
        cache=CacheOptions(cache_dir), fetch=FetchOptions(storage_options, max_in_flight=in_flight),
        seed=seed, errors=ErrorOptions(on_error="raise"),
    )  # fmt: skip
    if media == "images":
        return build_image_graph(table, size=args.image_size, batch_size=32, **common)
    return build_video_graph(table, num_frames=16, fps=8.0, size=64, batch_size=4, **common)


def count(items, batched: bool, first: Callable[[], None]) -> int:
    """Samples in ``items`` (batches when ``batched``); calls ``first()`` at the first one."""
    n = 0
    for item in items:
        if n == 0:
            first()
        n += len(item["__key__"]) if batched else 1
    return n


def in_process(make: Callable[[], Any], batched: bool, first: Callable[[], None]) -> int:
    """One epoch of the graph ``make()`` through ``torchdata.nodes.Loader`` in this process."""
    from torchdata.nodes import Loader

    from sdsnodes.nodes.graph import shutdown

    root = make()
    try:
        return count(Loader(root), batched, first)
    finally:
        shutdown(root)


def in_workers(
    make: Callable[[], Any], batched: bool, num_workers: int, first: Callable[[], None]
) -> int:
    """One epoch of the graph through ``StatefulDataLoader(StreamingDataset(make), ...)``."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import StreamingDataset

    loader = StatefulDataLoader(StreamingDataset(make), batch_size=None, num_workers=num_workers)
    return count(loader, batched, first)


def download_threads_of(media: str, args) -> int:
    """The preset's download threads (16 for images, 8 for videos) unless ``--download-threads``."""
    if args.download_threads is not None:
        return args.download_threads
    return 16 if media == "images" else 8


def loaders_for(
    media: str, store: Store, urls: Sequence[str], sizes: Sequence[int], args, workdir: Path
):
    """The loaders of one media kind: name → function(repeat) → items delivered."""
    import pyarrow as pa

    column = "image" if media == "images" else "video"
    table = pa.table({column: list(urls), "size": list(sizes), "caption": ["noise"] * len(urls)})
    options, threads, w = store.storage_options, download_threads_of(media, args), args.num_workers

    def fresh_cache() -> str:
        return tempfile.mkdtemp(dir=workdir, prefix="cache-")

    def with_cache(fn: Callable[[str], int]) -> int:  # a fresh, empty cache dir per run
        cache = fresh_cache()
        try:
            return fn(cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def dl(cache: str):
        return functools.partial(download_graph, table, column, cache, options, threads)

    def graph(cache: str, repeat: int):
        return functools.partial(media_graph, table, media, cache, options, args, repeat)

    kind = "image" if media == "images" else "video"
    return {
        SEQ: lambda r, f: sequential_get(store, urls, workdir, f),
        BULK: lambda r, f: bulk_cat(store, urls, f),
        f"download-only graph ({w} workers)": lambda r, f: with_cache(
            lambda c: in_workers(dl(c), False, w, f)
        ),
        "download-only graph (in-process Loader)": lambda r, f: with_cache(
            lambda c: in_process(dl(c), False, f)
        ),
        f"{kind} graph ({w} workers)": lambda r, f: with_cache(
            lambda c: in_workers(graph(c, r), True, w, f)
        ),
        f"{kind} graph (in-process Loader)": lambda r, f: with_cache(
            lambda c: in_process(graph(c, r), True, f)
        ),
    }


# -- the benchmark ----------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=3)
    add = parser.add_argument
    add(
        "--num-images",
        type=int,
        default=None,
        help="image objects (default 800, 100 with --quick)",
    )
    add(
        "--distinct-images",
        type=int,
        default=None,
        help="distinct JPEGs among them (default 250, 20 with --quick)",
    )
    add(
        "--image-side",
        type=int,
        default=330,
        help="JPEG side in px (default 330: ~100 KB of noise)",
    )
    add(
        "--image-size",
        type=int,
        default=128,
        help="the image graph's output size in px (default 128)",
    )
    add(
        "--num-videos",
        type=int,
        default=None,
        help="video objects (default 64, 8 with --quick; 0: none)",
    )
    add("--video-seconds", type=float, default=3.0, help="length of each video in s (default 3)")
    add("--num-workers", type=int, default=2, help="DataLoader workers (default 2)")
    add(
        "--download-threads",
        type=int,
        default=None,
        help="download threads per graph (default: the preset's, 16 images / 8 videos)",
    )
    add(
        "--server",
        choices=("s3", "http"),
        default="s3",
        help="moto S3 (default) or the aiohttp HTTP server",
    )
    add(
        "--latency-ms",
        type=float,
        default=0.0,
        help="with --server http: delay per request in ms (default 0)",
    )
    args = parser.parse_args(argv)
    args.num_images = args.num_images if args.num_images is not None else 100 if args.quick else 800
    args.distinct_images = args.distinct_images or (20 if args.quick else 250)
    args.num_videos = args.num_videos if args.num_videos is not None else 8 if args.quick else 64
    for name in ("num_images", "num_videos"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("distinct_images", "image_side", "image_size", "num_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.latency_ms and args.server != "http":
        parser.error("--latency-ms needs --server http (moto has no fault injection)")
    return args


def summarize(runs: list[Run]) -> tuple[float, float]:
    """Median client and server CPU milliseconds per item over ``runs``."""
    client = statistics.median(1000 * r.client_cpu / r.items for r in runs)
    server = statistics.median(1000 * r.server_cpu / r.items for r in runs)
    return client, server


def report(
    media: str, group: str, runs: dict[str, list[Run]], server_name: str
) -> tuple[list[Result], list[str]]:
    """The table rows of one media kind, and the lines about targets and CPU ceilings."""
    rows = []
    bulk = statistics.median(r.rate for r in runs[BULK])
    for name, measured in runs.items():
        client, server = summarize(measured)
        row = Result(
            name, [r.rate for r in measured], unit="samples/s", group=group, baseline=name == SEQ
        )
        first = statistics.median(r.first_seconds for r in measured)
        row.note = (
            f"{row.median / bulk:4.2f}x bulk  1st after {first:4.2f} s  "
            f"cpu/obj: client {client:4.1f} ms, server {server:3.1f} ms"
        )
        rows.append(row)
    seq = rows[0].median
    lines = [
        f"{media} — targets (printed, not enforced): >= {TARGET_SEQ:g}x sequential, >= {TARGET_BULK:g}x bulk"
    ]
    cores = len(os.sched_getaffinity(0))
    for row in rows[2:]:
        vs_seq, vs_bulk = row.median / seq, row.median / bulk
        own = cores * 1000 / sum(summarize(runs[row.name]))
        lines.append(
            f"  {row.name:<40} {vs_seq:5.2f}x sequential ({'met' if vs_seq >= TARGET_SEQ else 'missed'})"
            f"   {vs_bulk:5.2f}x bulk ({'met' if vs_bulk >= TARGET_BULK else 'missed'})"
            f"   CPU ceiling of this row {own:4.0f}/s = {own / bulk:4.2f}x bulk"
        )
    client, server = summarize(runs[SEQ])
    ceiling = cores * 1000 / (client + server)
    lines.append(
        f"  ceiling: per object the {server_name} spends {server:.1f} ms of CPU and the client "
        f"{client:.1f} ms (sequential loop);\n  {cores} cores serve at most {ceiling:.0f} objects/s = "
        f"{ceiling / seq:.1f}x the sequential loop's {seq:.0f}/s"
        + (
            f"; moto alone (one process) at most {1000 / server:.0f}/s"
            if "moto" in server_name
            else ""
        )
    )
    return rows, lines


def main(argv: Sequence[str] | None = None) -> int:
    silence_worker_warnings()
    args = parse(argv)
    import torch  # noqa: F401 - imported before timing, as a training script has
    import torchdata.stateful_dataloader  # noqa: F401

    import sdsnodes  # noqa: F401

    repeats = repeats_of(args)
    data_dir = args.dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=data_dir, prefix="remote-run-"))
    store = Store(args.server, args.latency_ms)
    try:
        plan: dict[str, tuple[list[str], list[int]]] = {}
        began = time.perf_counter()
        if args.num_images:
            distinct = noise_jpegs(args.distinct_images, args.image_side)
            blobs = [distinct[i % len(distinct)] for i in range(args.num_images)]
            plan["images"] = (store.upload("images", blobs, "jpg"), [len(b) for b in blobs])
        if args.num_videos:
            folder = data_dir / f"remote-videos-n{args.num_videos}-{args.video_seconds:g}s-256x192"
            blobs = small_videos(folder, args.num_videos, args.video_seconds)
            plan["videos"] = (store.upload("videos", blobs, "mp4"), [len(b) for b in blobs])
        latency = f", {args.latency_ms:g} ms latency per request" if args.latency_ms else ""
        print(
            f"{store.describe()} on 127.0.0.1{latency}, data uploaded in {time.perf_counter() - began:.1f} s; "
            f"{args.num_workers} DataLoader workers; {repeats} repeat(s), order alternating; "
            f"cold cache each run",
            flush=True,
        )
        results: list[Result] = []
        notes: list[str] = []
        for media, (urls, sizes) in plan.items():
            mean_kb = statistics.mean(sizes) / 1000
            group = f"{media}: {len(urls)} objects of {mean_kb:.0f} KB on average"
            print(f"{group}, {sum(sizes) / 1e6:.1f} MB in all", flush=True)
            store.warm_up(urls[0])
            loaders = loaders_for(media, store, urls, sizes, args, workdir)
            runs: dict[str, list[Run]] = {name: [] for name in loaders}
            for repeat in range(repeats):
                for name in in_turn(list(loaders), repeat):
                    run = measure(functools.partial(loaders[name], repeat), store.pid)
                    if run.items != len(urls):
                        raise RuntimeError(
                            f"{name} delivered {run.items} {media}, expected {len(urls)}"
                        )
                    runs[name].append(run)
                    print(
                        f"  repeat {repeat + 1}/{repeats}  {name}: {run.items} in {run.seconds:.2f} s "
                        f"({run.rate:.0f}/s, 1st after {run.first_seconds:.2f} s; cpu client {run.client_cpu:.1f} s, server {run.server_cpu:.1f} s)",
                        flush=True,
                    )
            rows, lines = report(media, group, runs, store.describe())
            results += rows
            notes += lines
        print()
        title = f"remote: cold-cache samples/s from the {store.describe()}{latency}"
        print(format_table(results, title=title))
        print("\n" + "\n".join(notes))
        if args.json:
            config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
            print(f"wrote {write_json(NAME, results, {**config, 'repeats': repeats})}")
    finally:
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
