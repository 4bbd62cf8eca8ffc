"""Small GCS objects: ``fs.cat(list)`` against compose-then-fetch (gcsfs ``merge``), on
fake-gcs-server (``tests/servers/gcs.py``, loopback).

For each group size n (2, 4, 8, 16, 32 — GCS composes at most 32 sources): read n small objects
(``--size`` bytes each, 40 KB like a JPEG) either with one ``fs.cat(paths)`` (*the baseline*:
gcsfs sends the n GETs concurrently on its event loop, one connection pool), or by composing
them into one temporary object, fetching it once, splitting it by the known sizes and deleting
it. Reported per object: client CPU ms (this process, user + system) and wall ms; the split is
checked byte for byte against the sources.

fake-gcs-server does serve compose (``POST .../o/DEST/compose``): the check runs first and says
so. The emulator's costs are not GCS's (no per-request latency of tens of ms, no operation
billing), so the wall column says little about GCS itself; the client CPU column is what a
loader process pays either way.

Then the same through the :class:`~sdsnodes.CachingDownloader` (``--objects`` objects, cold
cache each run, window ``--window``): one GET per object (*the baseline*) against
``FetchOptions(gcs_compose=GcsComposeOptions())``; client CPU and wall µs per object, and the
bytes checked against the sources.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence

from benchmarks._common import Result, add_common_args, format_table, in_turn, repeats_of

NAME = "gcs_compose"
DESCRIPTION = (
    "small GCS objects: fs.cat(list) vs compose (gcsfs merge) + one GET + split, client CPU and "
    "wall per object, on fake-gcs-server"
)
GROUPS = (2, 4, 8, 16, 32)
OFF, ON = "downloader, one GET per object", "downloader, gcs_compose"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cat_list(fs, paths: list[str], sizes: list[int]) -> list[bytes]:
    """The baseline: gcsfs fetches the objects concurrently."""
    found = {fs._strip_protocol(k): v for k, v in fs.cat(paths).items()}
    return [found[fs._strip_protocol(p)] for p in paths]


def composed(fs, paths: list[str], sizes: list[int], tmp: str) -> list[bytes]:
    """Compose ``paths`` into ``tmp``, fetch it once, split it by ``sizes``, delete it."""
    fs.merge(tmp, paths)
    try:
        blob = fs.cat_file(tmp)
    finally:
        fs.rm_file(tmp)
    out, start = [], 0
    for size in sizes:
        out.append(blob[start : start + size])
        start += size
    return out


def download_all(
    server, index: str, cache_dir: str, window: int, compose: bool
) -> tuple[dict, dict]:
    """One cold-cache epoch of a CachingDownloader over ``index``: ``{url: bytes}`` and the
    node's compose counts."""
    from sdsnodes import (
        CacheOptions,
        CachingDownloader,
        FetchOptions,
        GcsComposeOptions,
        IndexReader,
    )

    fetch = FetchOptions(
        server.storage_options, max_in_flight=window,
        gcs_compose=GcsComposeOptions() if compose else None,
    )  # fmt: skip
    reader = IndexReader(index, index_cache_dir=index + "-cache")
    node = CachingDownloader(reader, ["file"], cache=CacheOptions(cache_dir), fetch=fetch)
    node.reset()
    out = {}
    for sample in node:
        with open(sample["file"], "rb") as f:
            out[sample["__url__.file"]] = f.read()
    node.shutdown()
    return out, node.compose_counts


def downloader_rows(server, bucket: str, args, repeats: int) -> list[Result]:
    """CPU and wall per object of the downloader, compose off (baseline) and on."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = server.fs()
    blobs = {f"{bucket}/dl/{i:04d}": bytes([i % 251]) * (args.size + 3 * i)
             for i in range(args.objects)}  # fmt: skip
    fs.pipe(blobs)
    rows = {(w, kind): Result(w, unit=f"{kind} µs/object", group=f"{kind}, {args.objects} objects",
                              baseline=w == OFF)
            for kind in ("CPU", "wall") for w in (OFF, ON)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        index = f"{tmp}/index.parquet"
        sizes = [len(b) for b in blobs.values()]
        pq.write_table(pa.table({"file": list(blobs), "size": sizes}), index)
        for way in (OFF, ON):  # imports, the index's conversion, the connection pool: untimed
            download_all(server, index, f"{tmp}/warm-{way[-3:]}", args.window, way == ON)
        runs = 0
        for repeat in range(repeats):
            for way in in_turn([OFF, ON], repeat):
                runs += 1
                cpu, wall = cpu_seconds(), time.perf_counter()
                got, counts = download_all(
                    server, index, f"{tmp}/cache{runs}", args.window, way == ON
                )
                rows[way, "CPU"].values.append(1e6 * (cpu_seconds() - cpu) / args.objects)
                rows[way, "wall"].values.append(1e6 * (time.perf_counter() - wall) / args.objects)
                if got != blobs:
                    raise RuntimeError(f"{way}: wrong bytes")
                if way == ON:
                    note = f"{counts['composed_objects']} composed, {counts['fallback_objects']} fell back"
                    rows[way, "CPU"].note = rows[way, "wall"].note = note
        from sdsnodes.nodes._cache_ref import close_caches

        close_caches()
    return list(rows.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=5)
    parser.add_argument("--size", type=int, default=40_000, help="bytes per object (40000)")
    parser.add_argument("--rounds", type=int, default=None, help="groups read per measurement")
    parser.add_argument("--objects", type=int, default=None, help="downloader objects (512)")
    parser.add_argument("--window", type=int, default=64, help="downloader max_in_flight (64)")
    args = parser.parse_args(argv)
    from tests.servers.gcs import GCSServer

    repeats = repeats_of(args)
    rounds = args.rounds or (2 if args.quick else 8)
    with GCSServer() as server:
        fs = server.fs()
        bucket = server.make_bucket("compose-bench")
        paths, sizes, blobs = [], [], []
        for i in range(max(GROUPS)):
            size = args.size + 7 * i  # distinct sizes: a wrong split shows
            data = bytes([i]) * size
            fs.pipe_file(f"{bucket}/obj-{i:03d}", data)
            paths.append(f"{bucket}/obj-{i:03d}")
            sizes.append(size)
            blobs.append(data)
        ok = composed(fs, paths, sizes, f"{bucket}/tmp-check") == blobs
        print(f"fake-gcs-server serves compose (gcsfs merge): {'yes' if ok else 'NO'}; "
              f"{args.size} B objects, {rounds} groups per measurement, {repeats} repeat(s)")  # fmt: skip
        if not ok:
            return 1
        rows = []
        for n in GROUPS:
            ways = {
                "fs.cat(list)": lambda n=n: cat_list(fs, paths[:n], sizes[:n]),
                "compose + 1 GET + split": lambda n=n: composed(
                    fs, paths[:n], sizes[:n], f"{bucket}/tmp-{n}"
                ),
            }
            cpu_rows = {w: Result(w, unit="CPU ms/object", group=f"{n} objects",
                                  baseline=w == "fs.cat(list)") for w in ways}  # fmt: skip
            for repeat in range(repeats):
                for way in in_turn(list(ways), repeat):
                    cpu, wall = cpu_seconds(), time.perf_counter()
                    for _ in range(rounds):
                        if ways[way]() != blobs[:n]:
                            raise RuntimeError(f"{way}: wrong bytes for {n} objects")
                    per = rounds * n
                    cpu_rows[way].values.append(1000 * (cpu_seconds() - cpu) / per)
                    wall_ms = 1000 * (time.perf_counter() - wall) / per
                    cpu_rows[way].note = (cpu_rows[way].note + f" {wall_ms:.2f}").strip()
            for row in cpu_rows.values():
                row.note = f"wall ms/object: {row.note}"
            rows += list(cpu_rows.values())
        args.objects = args.objects or (128 if args.quick else 512)
        loader_rows = downloader_rows(server, bucket, args, repeats)
    print()
    print(format_table(rows, title="gcs_compose: client CPU ms per object (lower is better)"))
    for kind in ("CPU", "wall"):
        print()
        title = f"gcs_compose: CachingDownloader, {kind} µs per object (lower is better)"
        print(format_table([r for r in loader_rows if r.unit.startswith(kind)], title=title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
