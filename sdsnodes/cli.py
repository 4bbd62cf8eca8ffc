"""The ``sds`` command: demo, index build/inspect, cache stats/clean, top, pack, bench.

Exit codes: 0 success, 1 the command failed (the message on stderr says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

from sdsnodes._pack_cli import add_pack_command
from sdsnodes.top import add_top_command

DEFAULT_DEMO_DIR = (
    Path(os.environ.get("SDS_CACHE_DIR") or Path.home() / ".cache" / "sdsnodes") / "demo"
)


def _demo(args: argparse.Namespace) -> int:
    from torchdata.stateful_dataloader import StatefulDataLoader
    from tqdm import tqdm

    from sdsnodes import CacheOptions, StreamingDataset, build_video_graph, error_stats
    from sdsnodes._synthetic import make_video_dataset
    from sdsnodes.metrics import postfix, stats, timed

    if args.src is None:
        print(f"demo dataset: {args.dir} ({args.num_videos} H.264 clips, made once)")
        src = str(make_video_dataset(args.dir, num_videos=args.num_videos, progress=True))
    else:
        src = args.src
    factory = functools.partial(
        build_video_graph, src, num_frames=args.num_frames, fps=args.fps, size=args.size,
        batch_size=args.batch_size, cache=CacheOptions(args.cache_dir),
        video_column=args.video_column,
        caption_column=args.caption_column or None,
    )  # fmt: skip
    ds = StreamingDataset(factory)  # builds the graph here: a bad index or argument fails now
    num_rows = len(ds)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
        dl = timed(StatefulDataLoader(ds, batch_size=None, num_workers=args.num_workers))
    clips = frames = 0
    shapes: dict[str, tuple] = {}
    caption = None
    start = time.perf_counter()
    with tqdm(total=num_rows, unit="clip", desc="streaming") as bar:
        for batch in dl:
            video = batch[args.video_column]  # [B, T, C, H, W] uint8
            clips += video.shape[0]
            frames += video.shape[0] * video.shape[1]
            shapes = shapes or {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
            caption = caption or (batch.get(args.caption_column) or [None])[0]
            bar.update(video.shape[0])
            # samples/s, wait % (data stall time) and cache hit %: see sdsnodes.metrics
            bar.set_postfix(postfix(stats(dl, ledger=False)), refresh=False)
    elapsed = time.perf_counter() - start
    skipped = {k: v for k, v in error_stats(dl.state_dict()).items() if k != "seen"}
    print(f"streamed {clips} clips ({frames} frames) of {num_rows} rows in {elapsed:.2f} s "
          f"with {args.num_workers} workers (~{math.ceil(num_rows / args.batch_size)} batches)")  # fmt: skip
    print(f"throughput: {clips / elapsed:.1f} clips/s, {frames / elapsed:.1f} frames/s")
    print("first batch shapes: " + ", ".join(f"{k} {list(s)}" for k, s in shapes.items()))
    if caption:
        print(f"a caption: {caption!r}")
    print(f"skipped samples: {skipped or 'none'}")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _cache_stats(args: argparse.Namespace) -> int:
    from sdsnodes.cache import Cache

    if not Path(args.dir).is_dir():
        raise ValueError(f"{args.dir} is not a cache directory")
    stats = Cache(args.dir).stats()
    budget = "none" if stats["max_bytes"] is None else _human(stats["max_bytes"])
    print(f"cache {args.dir}")
    print(f"  files      {stats['files']:>10}   {_human(stats['bytes'])}")
    print(f"  pinned     {stats['pinned_files']:>10}   {_human(stats['pinned_bytes'])}")
    print(f"  hits       {stats['hits']:>10}")
    print(f"  misses     {stats['misses']:>10}")
    print(f"  evictions  {stats['evictions']:>10}")
    print(f"  fetched    {_human(stats['bytes_fetched']):>10}")
    print(f"  budget     {budget:>10}   (set by each reader's max_bytes)")
    return 0


def _cache_clean(args: argparse.Namespace) -> int:
    from sdsnodes.cache import Cache

    if not Path(args.dir).is_dir():
        raise ValueError(f"{args.dir} is not a cache directory")
    cache = Cache(args.dir)
    freed = cache.clean()
    left = cache.stats()
    print(f"removed {_human(freed)}; {left['files']} pinned file(s) in use by live processes kept")
    return 0


def _index_inspect(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from sdsnodes.index import read_index

    table = read_index(args.index)
    print(f"index {args.index}: {table.num_rows} rows, {table.num_columns} columns")
    for field in table.schema:
        nulls = table.column(field.name).null_count
        print(f"  {field.name:<24} {str(field.type):<16} nulls={nulls}")
    print(f"first {min(args.rows, table.num_rows)} rows:")
    for row in table.slice(0, args.rows).to_pylist():
        print("  " + ", ".join(f"{k}={str(v)[:60]!s}" for k, v in row.items()))
    if "size" in table.column_names and table.column("size").null_count < table.num_rows:
        sizes = table.column("size").drop_null()
        print(f"sizes: total {_human(pc.sum(sizes).as_py())}, min {_human(pc.min(sizes).as_py())}, "
              f"median {_human(pc.approximate_median(sizes).as_py())}, max {_human(pc.max(sizes).as_py())}")  # fmt: skip
        edges = [0, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, float("inf")]
        for lo, hi in zip(edges, edges[1:]):
            count = pc.sum(pc.and_(pc.greater_equal(sizes, lo), pc.less(sizes, hi))).as_py() or 0
            label = f"[{_human(lo)}, {_human(hi) if hi != float('inf') else 'inf'})"
            print(
                f"  {label:<24} {count:>8} {'#' * min(50, round(50 * count / max(1, len(sizes))))}"
            )
    return 0


def _index_build(args: argparse.Namespace) -> int:
    import json
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdsnodes.index import read_index
    from sdsnodes.index.listing import listing_defaults
    from sdsnodes.index.tar import is_tar_source, tar_index

    options = json.loads(args.storage_options) if args.storage_options else None
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"--storage-options must be a JSON object, got {args.storage_options!r}")
    if args.out:
        return _index_publish(args, options)
    if args.filter or args.rename:
        raise ValueError("--filter and --rename apply to a converted index: pass --out URL")
    if is_tar_source(args.src, options):  # WebDataset shards, indexed in place (sdsnodes.index.tar)
        counts: dict[str, int] = {}
        table = tar_index(args.src, options, num_threads=args.threads, mode=args.tar_read,
                          progress=not args.quiet, stats=counts)  # fmt: skip
        read = f", {_human(counts['bytes_read'])} in {counts['requests']} GETs" if counts[
            "requests"] else ""  # fmt: skip
        print(f"indexed {counts['tars']} tar(s): {counts['members']} members{read}")
    else:
        with listing_defaults(num_threads=args.threads, progress=not args.quiet):
            table = read_index(args.src, storage_options=options)
    if args.parse:
        pattern = re.compile(args.parse)
        if not pattern.groupindex:
            raise ValueError(
                f"--parse {args.parse!r} needs named groups, e.g. '(?P<label>[^/]+)/[^/]+$'"
            )
        by = "path" if "path" in table.column_names else "key"
        matches = [pattern.search(p or "") for p in table.column(by).to_pylist()]
        for name in pattern.groupindex:
            table = table.append_column(
                name, pa.array([m.group(name) if m else None for m in matches], pa.string())
            )
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    print(f"wrote {out}: {table.num_rows} rows, columns {table.column_names}")
    return 0


def _index_publish(args: argparse.Namespace, options: dict | None) -> int:
    from sdsnodes.index.published import publish

    if args.parse:
        raise ValueError("--parse writes a parquet index (-o FILE), not a converted one (--out)")
    rename = {}
    for pair in args.rename or []:
        old, sep, new = pair.partition("=")
        if not (sep and old and new):
            raise ValueError(f"--rename {pair!r} must be OLD=NEW, e.g. --rename url=video")
        rename[old] = new
    manifest = publish(args.src, args.out, options, filter=args.filter, rename=rename or None,
                       progress=None if not args.quiet else False)  # fmt: skip
    print(f"published {manifest['rows']} rows ({_human(manifest['size'])}, fingerprint "
          f"{manifest['fingerprint']}) to {args.out}: readers given it fetch it, not convert")  # fmt: skip
    return 0


def _bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.run import main as bench_main
    except ImportError:
        raise ValueError(
            "benchmarks/ is not importable: run `sds bench` from a checkout of sdsnodes"
        ) from None
    return int(bench_main(args.names + (["--quick"] if args.quick else [])))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sds", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="make a small real video dataset (once) and stream one epoch of it"
    )
    demo.add_argument(
        "--src", help="stream your own index instead (parquet/CSV/JSON/dir/wildcard/.txt)"
    )
    demo.add_argument(
        "--dir", type=Path, default=DEFAULT_DEMO_DIR, help="where the demo dataset is made"
    )
    demo.add_argument("--num-videos", type=int, default=64)
    demo.add_argument("--num-workers", type=int, default=2)
    demo.add_argument("--batch-size", type=int, default=4)
    demo.add_argument("--num-frames", type=int, default=16)
    demo.add_argument("--fps", type=float, default=8.0)
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--video-column", default="video")
    demo.add_argument("--caption-column", default="caption", help="'' for none")
    demo.add_argument("--cache-dir", default=None, help="download cache for remote sources")
    demo.set_defaults(func=_demo)

    index = sub.add_parser("index", help="build or inspect an index").add_subparsers(
        dest="action", required=True
    )
    build = index.add_parser(
        "build",
        help="list a directory (local or remote) into a parquet index, or index tar shards in place",
    )
    build.add_argument(
        "src",
        help="directory or URL (s3://, gs://, https://) of media files; or tar shards: a .tar, "
        "a wildcard ('shards/*.tar'), a brace range ('shard-{0000..0099}.tar') or a .txt list",
    )
    where = build.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", help="the parquet file to write")
    where.add_argument(
        "--out",
        help="a prefix (local, s3://, gs://) to publish the converted index to, once for the "
        "cluster: readers given the prefix download it instead of converting SRC (any index "
        "source: parquet, CSV, JSON, directory, wildcard, .txt, tar shards)",
    )
    build.add_argument("--filter", help="with --out: keep rows matching it, e.g. 'width >= 256'")
    build.add_argument(
        "--rename", action="append", metavar="OLD=NEW", help="with --out: rename a column"
    )
    build.add_argument(
        "--parse",
        help="regex with named groups applied to each path, e.g. '(?P<label>[^/]+)/[^/]+$'",
    )
    build.add_argument(
        "--storage-options",
        help='fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'',
    )
    build.add_argument(
        "--threads", type=int, default=16, help="listing requests (or tars read) in flight"
    )
    build.add_argument(
        "--tar-read", choices=("auto", "headers", "whole"), default="auto",
        help="remote tars: 'headers' skips member bodies (a ranged GET per header), 'whole' "
        "reads each tar in one GET, 'auto' reads through small members and skips large ones",
    )  # fmt: skip
    build.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_index_build)
    inspect = index.add_parser("inspect", help="schema, rows, a few samples and a size histogram")
    inspect.add_argument("index")
    inspect.add_argument("--rows", type=int, default=5)
    inspect.set_defaults(func=_index_inspect)

    cache = sub.add_parser("cache", help="look at or empty a cache directory").add_subparsers(
        dest="action", required=True
    )
    stats = cache.add_parser("stats", help="files, bytes, pins and counters of a cache directory")
    stats.add_argument("dir")
    stats.set_defaults(func=_cache_stats)
    clean = cache.add_parser("clean", help="remove every file no live process has pinned")
    clean.add_argument("dir")
    clean.set_defaults(func=_cache_clean)

    add_top_command(sub)
    add_pack_command(sub)

    bench = sub.add_parser("bench", help="run the benchmarks (from a checkout)")
    bench.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    bench.add_argument("--quick", action="store_true", help="small configs, one repeat")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ValueError, OSError) as error:
        print(f"sds {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
