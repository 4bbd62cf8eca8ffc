"""Listing a big prefix on the moto S3 server: ``sdsnodes.index.listing.list_files`` (key ranges
split among threads) against one ``fs.find`` (s3fs's single paginated listing).

Data: ``--num-objects`` (default 100,000; 5,000 with ``--quick``) small objects under one flat
prefix, ``flat/000000.jpg`` ... (``--layout nested`` spreads them over 100 "directories",
``tree/07/000007.jpg``). Uploading 100k objects through HTTP PUTs costs about 5-20 ms each on
this machine (minutes to tens of minutes), so the moto server process is seeded through moto's
own backend (``put_object``) before it starts serving; the listing requests then go through the
server's HTTP API like any other. The server is started once per run and reused by every repeat.

Loaders (each measured ``--repeats`` times, order alternated; the table shows objects/s):

- **one fs.find** (*the baseline*): ``s3fs.S3FileSystem.find(prefix, detail=True)`` on a
  filesystem created before timing, its listing cache emptied before each repeat: one
  ``ListObjectsV2`` pagination, 1,000 keys a page, one request at a time.
- **list_files (N threads)**: ``list_files("s3://bucket/prefix", num_threads=N)``, the key space
  split into ranges listed at the same time (work stealing, see ``sdsnodes/index/listing.py``).
- ``--num-threads 1 16`` adds **list_files (1 thread)**: the same code with one thread (one range,
  paginated like ``find``), to tell the gain of the parallel requests from the rest.

Before timing, both listings are checked to return exactly the same (key, size) pairs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Result,
    add_common_args,
    format_table,
    in_turn,
    repeats_of,
    write_json,
)

NAME = "listing"
DESCRIPTION = (
    "listing 100k objects on the moto S3 server: parallel key-range listing (list_files) "
    "vs one s3fs fs.find"
)

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
BUCKET = "sds-bench-listing"
FIND = "one fs.find"

_SEED_AND_SERVE = r"""
import sys
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

bucket, count, layout = sys.argv[1], int(sys.argv[2]), sys.argv[3]
backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
backend.create_bucket(bucket, "us-east-1")
for i in range(count):
    key = f"flat/{i:06d}.jpg" if layout == "flat" else f"tree/{i % 100:02d}/{i:06d}.jpg"
    backend.put_object(bucket, key, b"x" * (i % 97))
from moto.server import main
main(sys.argv[4:])
"""


def seeded_s3_server(count: int, layout: str) -> Any:
    """A started moto S3 server (``tests/servers``) whose bucket ``BUCKET`` holds ``count``
    objects, put in by the server process itself before it serves."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.append(str(TESTS_DIR))  # appended: nothing there may shadow an installed module
    from servers.s3 import S3Server

    class SeededS3Server(S3Server):
        name = "moto-s3-seeded"
        start_timeout = 600.0

        def _command(self, port: int) -> list[str]:
            return [
                sys.executable, "-c", _SEED_AND_SERVE, BUCKET, str(count), layout,
                "-H", self.host, "-p", str(port),
            ]  # fmt: skip

    return SeededS3Server().start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.bench_{NAME}", description=__doc__)
    add_common_args(parser, repeats=3)
    parser.add_argument(
        "--num-objects", type=int, default=None, help="objects listed (default 100000, 5000 quick)"
    )
    parser.add_argument(
        "--num-threads", type=int, nargs="+", default=[16], help="thread counts of list_files"
    )
    parser.add_argument("--layout", choices=("flat", "nested"), default="flat")
    args = parser.parse_args(argv)
    repeats = repeats_of(args)
    count = args.num_objects or (5_000 if args.quick else 100_000)
    prefix = "flat" if args.layout == "flat" else "tree"

    from sdsnodes.index.listing import list_files

    started = time.perf_counter()
    server = seeded_s3_server(count, args.layout)
    try:
        print(
            f"moto S3 at {server.url}: {count} objects under s3://{BUCKET}/{prefix}/ "
            f"({args.layout}), seeded and served in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        options = server.storage_options
        fs = server.fs()
        url = f"s3://{BUCKET}/{prefix}"

        def find() -> list[tuple[str, int]]:
            fs.invalidate_cache()
            listing = fs.find(f"{BUCKET}/{prefix}", detail=True)
            return [(f"s3://{name}", int(info["size"])) for name, info in listing.items()]

        def parallel(threads: int) -> Callable[[], list[tuple[str, int]]]:
            return lambda: list_files(url, options, num_threads=threads)

        loaders: dict[str, Callable[[], list]] = {FIND: find}
        for threads in args.num_threads:
            label = f"{threads} thread" + ("s" if threads > 1 else "")
            loaders[f"list_files ({label})"] = parallel(threads)

        expected = sorted(find())
        if len(expected) != count:
            raise SystemExit(f"fs.find listed {len(expected)} objects, expected {count}")
        for name, fn in loaders.items():
            if sorted(fn()) != expected:
                raise SystemExit(f"{name} did not list exactly what fs.find listed")
        print(f"checked: every loader lists the same {count} (key, size) pairs", flush=True)

        rows = {
            name: Result(name, unit="objects/s", group=f"{count} objects", baseline=name == FIND)
            for name in loaders
        }
        seconds: dict[str, list[float]] = {name: [] for name in loaders}
        for repeat in range(repeats):
            for name in in_turn(list(loaders), repeat):
                start = time.perf_counter()
                listed = loaders[name]()
                elapsed = time.perf_counter() - start
                if len(listed) != count:
                    raise SystemExit(f"{name} listed {len(listed)} objects, expected {count}")
                rows[name].values.append(count / elapsed)
                seconds[name].append(elapsed)
        for name, row in rows.items():
            row.note = f"{statistics.median(seconds[name]):.2f} s"
        table = list(rows.values())
        print(format_table(table, title=f"{NAME}: objects listed/s on moto S3 ({args.layout})"))
        if args.json:
            config = {**vars(args), "num_objects": count, "repeats": repeats}
            print(f"wrote {write_json(NAME, table, config)}")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
