"""``sds pack SRC DST``: the command line of :func:`sdsnodes.pack.pack` (added to ``sds``'s parser
by :mod:`sdsnodes.cli`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def _options(text: str | None, flag: str) -> dict | None:
    options = json.loads(text) if text else None
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return options


def _pack(args: argparse.Namespace) -> int:
    from sdsnodes.pack import pack

    start = time.perf_counter()
    result = pack(
        args.src, args.dst, shard_size=args.shard_size, num_shards=args.num_shards,
        row_group_size=args.row_group_size, prefix=args.prefix,
        media_columns=args.media_columns.split(",") if args.media_columns else None,
        storage_options=_options(args.storage_options, "--storage-options"),
        dst_storage_options=_options(args.dst_storage_options, "--dst-storage-options"),
        num_threads=args.threads, progress=not args.quiet,
    )  # fmt: skip
    kept = len(result.shards) - result.written
    print(
        f"packed {result.rows} rows into {len(result.shards)} shards in {args.dst} "
        f"({result.written} written, {kept} complete already) in "
        f"{time.perf_counter() - start:.1f} s; unreadable media: {result.missing}"
    )
    return 0


def add_pack_command(sub: Any) -> None:
    """Add ``pack`` to the ``sds`` subcommands ``sub`` (what ``add_subparsers()`` returned)."""
    pack = sub.add_parser(
        "pack",
        help="write an index and its media bytes as parquet shards (Hugging Face layout); "
        "rerun to finish an interrupted pack",
    )
    pack.add_argument("src", help="any index: parquet/CSV/JSON, a directory, tar shards, a URL")
    pack.add_argument("dst", help="output directory, local or a URL (s3://, gs://)")
    pack.add_argument("--shard-size", default="256MB", help="bytes per shard, e.g. 256MB, 1GiB")
    pack.add_argument("--num-shards", type=int, default=None, help="this many shards instead")
    pack.add_argument(
        "--row-group-size", type=int, default=None, help="rows per row group (default ~8 MiB)"
    )
    pack.add_argument("--prefix", default="train", help="shard names: <prefix>-00000-of-….parquet")
    pack.add_argument(
        "--media-columns", help="comma-separated media columns (default: found by extension)"
    )
    pack.add_argument("--storage-options", help="fsspec options of SRC and its media, as JSON")
    pack.add_argument("--dst-storage-options", help="fsspec options of DST, as JSON")
    pack.add_argument("--threads", type=int, default=32, help="media files read at a time")
    pack.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pack.set_defaults(func=_pack)
