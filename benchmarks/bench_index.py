"""A 10M-row index: time to first sample and RSS growth (graph vs reading the whole index with
pyarrow), resume at row 5M (no replay), and ``ds[i]`` latency on a cold and a warm cache.

Each measurement runs in a fresh subprocess, so RSS and imports start equal. Targets (issue 6):
first sample < 3 s and RSS growth < 300 MB with the converted index cached; resume < 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks._common import add_common_args, default_data_dir, repeats_of

NAME = "index"
DESCRIPTION = "10M-row index: first sample, RSS, resume at 5M, ds[i] latency"

_PRELUDE = """
import json, os, sys, time, resource
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
import sdsnodes, pyarrow, pyarrow.parquet  # imports are not what we measure
base = rss_mb()
t0 = time.perf_counter()
"""

GRAPH = """
from torchdata.nodes import Loader
from sdsnodes import IndexReader, Shuffler
loader = Loader(Shuffler(IndexReader(sys.argv[1], index_cache_dir=sys.argv[2]), seed=0))
first = next(iter(loader))
out = {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb() - base}
"""

PYARROW = """
table = pyarrow.parquet.read_table(sys.argv[1])
first = table.slice(0, 1).to_pylist()[0]
out = {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb() - base}
"""

RESUME = """
from torchdata.nodes import Loader
from sdsnodes import IndexReader, Shuffler
from sdsnodes.nodes.epoch_reader import EpochReader
reader = IndexReader(sys.argv[1], index_cache_dir=sys.argv[2])
n = len(reader.index)
probe = Shuffler(reader, seed=0)  # a state at position n // 2, spelled through the key constants
probe.reset()
state = {"root": probe.get_state(), "num_yielded": n // 2}
state["root"][Shuffler.SOURCE_KEY][EpochReader.POSITION_KEY] = n // 2
reader = IndexReader(sys.argv[1], index_cache_dir=sys.argv[2])
t0 = time.perf_counter()
loader = Loader(Shuffler(reader, seed=0))
loader.load_state_dict(state)
first = next(iter(loader))
out = {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb() - base, "position": n // 2}
"""

REPLAY = """
from torchdata.nodes import Loader
from sdsnodes import IndexReader, Shuffler
reader = IndexReader(sys.argv[1], index_cache_dir=sys.argv[2])
skip = int(sys.argv[3])
t0 = time.perf_counter()
it = iter(Loader(Shuffler(reader, seed=0)))
for _ in range(skip):
    next(it)
out = {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb() - base, "replayed": skip}
"""


def run(script: str, *args: str) -> dict:
    code = _PRELUDE + script + "\nprint(json.dumps(out))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_index(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(
        tmp, pa.schema([("url", pa.string()), ("caption", pa.string())])
    ) as writer:
        for start in range(0, rows, 1_000_000):
            ids = pc.cast(pa.array(np.arange(start, min(rows, start + 1_000_000))), pa.string())
            urls = pc.binary_join_element_wise("s3://bucket/images/", ids, ".jpg", "")
            captions = pc.binary_join_element_wise(
                "a photo of item number ", ids, " on a table", ""
            )
            writer.write_table(pa.table({"url": urls, "caption": captions}), row_group_size=131_072)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run index", description=__doc__)
    add_common_args(parser, repeats=3)
    parser.add_argument(
        "--rows", type=int, default=None, help="index rows (default 10M, 200k with --quick)"
    )
    args = parser.parse_args(argv)
    repeats = repeats_of(args)
    rows = args.rows or (200_000 if args.quick else 10_000_000)
    root = (args.dir or default_data_dir()) / "index"
    source = root / f"index-{rows}.parquet"
    make_index(source, rows)
    cache = root / "converted"
    table: dict[str, list[dict]] = {}

    def measure(label: str, script: str, *extra: str, fresh: bool = False) -> None:
        for _ in range(repeats):
            if fresh:
                subprocess.run(["rm", "-rf", str(cache)], check=True)
            table.setdefault(label, []).append(run(script, str(source), str(cache), *extra))

    measure("pyarrow read_table (whole index) *", PYARROW)
    measure("graph, first run (converts the index)", GRAPH, fresh=True)
    measure("graph, converted index cached", GRAPH)
    measure(f"graph resume at row {rows // 2:,}", RESUME)
    replay = min(rows // 2, 200_000)
    measure(f"replay baseline: iterate {replay:,} rows", REPLAY, str(replay))

    base = statistics.median(r["seconds"] for r in table["pyarrow read_table (whole index) *"])
    print(
        f"\n{rows:,}-row index ({source.stat().st_size / 2**20:.0f} MB parquet), medians of {repeats}"
    )
    print(f"{'':<44}{'seconds':>10}{'min':>8}{'max':>8}{'RSS +MB':>10}{'time ratio':>12}")
    for label, results in table.items():
        secs = [r["seconds"] for r in results]
        rss = statistics.median(r["rss_mb"] for r in results)
        med = statistics.median(secs)
        print(
            f"{label:<44}{med:>10.3f}{min(secs):>8.3f}{max(secs):>8.3f}{rss:>10.0f}{med / base:>12.3f}"
        )
    per_row = (
        statistics.median(r["seconds"] for r in table[f"replay baseline: iterate {replay:,} rows"])
        / replay
    )
    resume = statistics.median(r["seconds"] for r in table[f"graph resume at row {rows // 2:,}"])
    print(f"\nreplaying to row {rows // 2:,} would take ~{per_row * rows / 2:.1f} s; resume took {resume:.3f} s "
          f"({per_row * rows / 2 / resume:.0f}x faster)")  # fmt: skip
    print("* baseline. targets: first sample < 3 s and RSS growth < 300 MB (cached); resume < 1 s")
    random_access(root, repeats, 16 if args.quick else 64)
    return 0


def random_access(root: Path, repeats: int, count: int) -> None:
    """``ds[i]`` latency: images over the loopback HTTP server, cold cache vs warm cache."""
    import shutil
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers.http import HTTPServer

    from sdsnodes import CacheOptions, StreamingDataset, build_image_graph
    from sdsnodes._synthetic import write_image
    from sdsnodes.nodes._cache_ref import close_caches

    cold, warm = [], []
    with HTTPServer() as server:
        for i in range(count):
            write_image(server.root / f"{i}.jpg", width=256, height=256, seed=i)
        index = root / "ra-index.parquet"
        pq.write_table(
            pa.table({"image": [server.url_for(f"{i}.jpg") for i in range(count)]}), index
        )
        for _ in range(repeats):
            cache = root / "ra-cache"
            close_caches()
            shutil.rmtree(cache, ignore_errors=True)
            ds = StreamingDataset(
                build_image_graph(
                    index, size=224, caption_column=None, cache=CacheOptions(str(cache))
                )
            )
            for store in (cold, warm):
                for i in range(count):
                    start = time.perf_counter()
                    ds[i]
                    store.append(time.perf_counter() - start)
    c, w = statistics.median(cold) * 1e3, statistics.median(warm) * 1e3
    print(f"\nds[i] latency, {count} JPEGs 256x256 → 224 over loopback HTTP, {repeats} repeats")
    print(f"{'':<32}{'ms (median)':>12}{'p90':>8}{'ratio':>8}")
    for label, values, med in (
        ("cold cache (download+decode)", cold, c),
        ("warm cache (decode) *", warm, w),
    ):
        p90 = sorted(values)[int(0.9 * (len(values) - 1))] * 1e3
        print(f"{label:<32}{med:>12.2f}{p90:>8.2f}{med / w:>8.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
