"""A remote parquet index read lazily (by row groups, on demand) vs converted to a local file.

The index lives on moto's S3 server (loopback). Each measurement runs in a fresh subprocess
(imports excluded from RSS): open the reader, then read ``--samples`` shuffled samples of the
index alone (``Shuffler(IndexReader)``, no media). Reported: seconds to the first sample, samples/s
after it, the RSS growth (VmRSS sampled every 5,000 samples, peak minus before opening), the
bytes the reader left on local disk (the index cache), and the chunks fetched. Baseline: the
converted index, cached (the default path once a machine has converted it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import add_common_args, in_turn, repeats_of

NAME = "lazy_index"
DESCRIPTION = "remote parquet index: lazy by row groups vs converted: RSS, disk, samples/s"
TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"

PROBE = """
import json, os, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.shuffler import Shuffler
url, options, cache, lazy, samples, world_size = sys.argv[1:]
before = rss()
t0 = time.perf_counter()
reader = IndexReader(url, storage_options=json.loads(options), index_cache_dir=cache,
                     lazy=lazy == "1", rank=0, world_size=int(world_size))
shuffler = Shuffler(reader, seed=0)
shuffler.reset()
next(shuffler)
first = time.perf_counter() - t0
peak = rss()
count = min(int(samples), len(shuffler) - 1)
t1 = time.perf_counter()
for i in range(count):
    next(shuffler)
    if i % 5000 == 0:
        peak = max(peak, rss())
seconds = time.perf_counter() - t1
peak = max(peak, rss())
disk = sum(f.stat().st_size for f in __import__("pathlib").Path(cache).rglob("*") if f.is_file())
print(json.dumps({"first_s": first, "samples_per_s": count / seconds, "rss_mb": (peak - before) / 2**20,
                  "disk_mb": disk / 2**20, "fetches": getattr(reader.index, "fetches", None)}))
"""


def probe(
    url: str, options: dict, cache: Path, lazy: bool, samples: int, world_size: int, env: dict
) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, url, json.dumps(options), str(cache), "1" if lazy else "0",
         str(samples), str(world_size)],
        capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_index(fs, path: str, rows: int, row_group: int) -> None:
    """``rows`` rows of (url, caption, aesthetic), row group by row group, streamed to ``path``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("url", pa.string()), ("caption", pa.string()), ("aesthetic", pa.float32())]
    )
    with fs.open(path, "wb") as sink, pq.ParquetWriter(sink, schema) as writer:
        for start in range(0, rows, row_group):
            ids = pc.cast(
                pa.array(range(start, min(rows, start + row_group)), pa.int64()), pa.string()
            )
            urls = pc.binary_join_element_wise("s3://bucket/videos/", ids, ".mp4", "")
            captions = pc.binary_join_element_wise("a video of item number ", ids, "", "")
            score = pa.array([(i % 100) / 10 for i in range(start, start + len(ids))], pa.float32())
            writer.write_table(pa.table([urls, captions, score], schema=schema))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run lazy_index", description=__doc__
    )
    add_common_args(parser, repeats=3)
    parser.add_argument(
        "--rows", type=int, default=None, help="index rows (10M; 200k with --quick)"
    )
    parser.add_argument("--samples", type=int, default=None, help="samples read (200k; 20k quick)")
    parser.add_argument("--row-group", type=int, default=16_384, help="rows per parquet row group")
    parser.add_argument("--world-size", type=int, default=1, help="shards; the probe is rank 0")
    args = parser.parse_args(argv)
    repeats = repeats_of(args)
    rows = args.rows or (200_000 if args.quick else 10_000_000)
    samples = args.samples or (20_000 if args.quick else 200_000)
    if str(TESTS_DIR) not in sys.path:
        sys.path.append(str(TESTS_DIR))  # appended: nothing there may shadow an installed module
    import servers.s3

    root = Path(args.dir or "/tmp") / f"lazy-index-{os.getpid()}"
    os.environ.update(servers.s3.CLIENT_ENV)
    with servers.s3.S3Server() as server:
        fs = server.fs()
        bucket = server.make_bucket("bench-lazy-index")
        url = f"{bucket}/index.parquet"
        start = time.perf_counter()
        write_index(fs, url, rows, args.row_group)
        written = time.perf_counter() - start
        size = fs.info(url)["size"]
        env = {**os.environ, **server.env}
        shards = args.world_size
        loaders = {  # name: (lazy, fresh cache, world size)
            "converted, first run (downloads, copies)": (False, True, shards),
            "converted, cached *": (False, False, shards),
            "lazy (row groups on demand)": (True, True, shards),
            f"lazy, rank 0 of {shards * 8} (memory / 8)": (True, True, shards * 8),
        }
        results: dict[str, list[dict]] = {name: [] for name in loaders}
        for repeat in range(repeats):
            for name in in_turn(list(loaders), repeat):
                lazy, fresh, world_size = loaders[name]
                cache = root / "converted"
                if fresh:
                    subprocess.run(["rm", "-rf", str(cache)], check=True)
                elif not cache.exists():  # the cached run needs a converted copy first
                    probe(url, server.storage_options, cache, False, 1, 1, env)
                results[name].append(
                    probe(url, server.storage_options, cache, lazy, samples, world_size, env)
                )
        subprocess.run(["rm", "-rf", str(root)], check=True)

    def med(name: str, key: str) -> float:
        values = [r[key] for r in results[name] if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    base = med("converted, cached *", "samples_per_s")
    print(
        f"\n{rows:,}-row parquet index on moto S3 ({size / 2**20:.0f} MiB, row groups of "
        f"{args.row_group:,}, written in {written:.1f} s); {samples:,} shuffled samples of rank 0 of "
        f"{shards} (unless said); medians of {repeats}"
    )
    print(f"{'':<42}{'first (s)':>10}{'samples/s':>11}{'min':>9}{'max':>9}{'RSS +MiB':>10}"
          f"{'disk MiB':>10}{'fetches':>9}{'ratio':>7}")  # fmt: skip
    for name in loaders:
        rates = [r["samples_per_s"] for r in results[name]]
        fetches = med(name, "fetches")
        print(
            f"{name:<42}{med(name, 'first_s'):>10.2f}{statistics.median(rates):>11,.0f}"
            f"{min(rates):>9,.0f}{max(rates):>9,.0f}{med(name, 'rss_mb'):>10.0f}"
            f"{med(name, 'disk_mb'):>10.0f}{'' if fetches != fetches else f'{fetches:.0f}':>9}"
            f"{statistics.median(rates) / base:>7.2f}"
        )
    print("* baseline. ratio: samples/s over the baseline's. RSS: peak VmRSS (sampled) minus before "
          "opening, s3fs/botocore imports included; disk: the index cache after the run")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
