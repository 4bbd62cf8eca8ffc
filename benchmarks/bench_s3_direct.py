"""S3 GETs through s3fs against presigned GETs through libcurl and through aiohttp
(``FetchOptions(s3_direct=...)``, :mod:`sdsnodes._s3_direct`, :mod:`sdsnodes._curl`): client CPU
per object, on moto (``tests/servers/s3.py``, loopback).

``--num-objects`` small JPEGs (``noise_jpegs``, ``--side`` px, default 128: about 20 KB) are
uploaded once to a moto server started here. Each measure downloads all of them into a fresh,
empty cache (kept until the run ends, under the bench data folder: see
``_common.cold_cache_folder``) with ``IndexReader → CachingDownloader → Evictor`` in this
process (no decoding), either through s3fs (``s3_direct=False``, *the baseline*) or by presigned GET
(``s3_direct=True``, the default), sent by libcurl (the default where ``pycurl`` imports) or by
aiohttp (``_s3_direct.TRANSPORT`` set for the measure); plus one ``fs.cat(list)`` call for reference (fsspec's own
batch, bodies kept in memory). Reported per object: client CPU ms (this process, user +
system), server CPU ms (moto's process) and objects/s; medians of ``--repeats``, in turn.

On loopback a GET costs CPU only, and moto shares the 2 cores with the client: the client CPU
column is what carries over to a real store.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import (
    Result,
    add_common_args,
    cold_cache_folder,
    create_cost,
    format_table,
    in_turn,
    repeats_of,
)
from benchmarks.bench_remote import import_servers, noise_jpegs

NAME = "s3_direct"
DESCRIPTION = (
    "S3 GETs via s3fs vs presigned GETs (libcurl, aiohttp): client CPU per object, on moto"
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq
    from torchdata.nodes import Loader

    from sdsnodes import (
        CacheOptions,
        CachingDownloader,
        Evictor,
        FetchOptions,
        IndexReader,
        _curl,
        _s3_direct,
    )

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run s3_direct", description=__doc__)
    add_common_args(parser, repeats=3)
    parser.add_argument("--num-objects", type=int, default=600)
    parser.add_argument("--side", type=int, default=128, help="JPEG side, px (128: ~20 KB)")
    args = parser.parse_args(argv)
    count = 100 if args.quick else args.num_objects
    servers = import_servers()
    os.environ.update(servers.s3.CLIENT_ENV)
    work = str(cold_cache_folder(args.dir, "s3-direct-"))  # each measure's cache kept to the end
    print(f"system CPU ms per file created in {work}: {create_cost(Path(work)):.3f}", flush=True)
    with servers.s3.S3Server() as server:
        fs = server.fs()
        server.make_bucket("bench")
        blobs = noise_jpegs(min(count, 64), args.side)
        urls = [f"s3://bench/img/{i:06d}.jpg" for i in range(count)]
        for i, url in enumerate(urls):
            fs.pipe(url, blobs[i % len(blobs)])
        index = os.path.join(work, "index.parquet")
        pq.write_table(pa.table({"image": urls}), index)
        proc = psutil.Process(server.pid)

        def server_cpu() -> float:
            times = proc.cpu_times()
            return times.user + times.system

        options = server.storage_options

        default_transport = _s3_direct.TRANSPORT  # restored after the measures

        def graph(direct: bool, transport: str = "aiohttp") -> int:
            _s3_direct.TRANSPORT = transport
            cache = tempfile.mkdtemp(dir=work)
            fetch = FetchOptions(storage_options=options, s3_direct=direct)
            node = CachingDownloader(IndexReader(index, storage_options=options), ["image"],
                                     cache=CacheOptions(cache), fetch=fetch)  # fmt: skip
            return sum(1 for _ in Loader(Evictor(node)))  # the cache stays until the end

        def cat() -> int:
            return len(server.fs().cat(urls))

        loaders = {
            "CachingDownloader, s3fs GETs": lambda: graph(False),
            "CachingDownloader, presigned, aiohttp": lambda: graph(True, "aiohttp"),
            **(
                {"CachingDownloader, presigned, libcurl": lambda: graph(True, "curl")}
                if _curl.AVAILABLE
                else {}
            ),
            "fs.cat(list), in memory": cat,
        }
        measures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in loaders}
        for r in range(repeats_of(args)):
            for name in in_turn(list(loaders), r):
                s0, c0, t0 = server_cpu(), _cpu(), time.perf_counter()
                n = loaders[name]()
                wall, client, srv = time.perf_counter() - t0, _cpu() - c0, server_cpu() - s0
                if n != count:
                    raise RuntimeError(f"{name}: {n} objects, expected {count}")
                measures[name].append((1e3 * client / n, 1e3 * srv / n, n / wall))
    shutil.rmtree(work, ignore_errors=True)
    _s3_direct.TRANSPORT = default_transport
    base = "CachingDownloader, s3fs GETs"
    rows = [
        Result(
            name, [1.0 / m[0] for m in values], "objects per client CPU ms", baseline=name == base
        )
        for name, values in measures.items()
    ]
    print(
        f"\n{count} objects of ~{len(blobs[0]) // 1000} KB from moto, cold cache, in this process"
    )
    print(format_table(rows, "client CPU efficiency (higher is better)"))
    print(f"{'reader':<36}{'client ms/obj':>14}{'server ms/GET':>15}{'objects/s':>11}")
    for name, values in measures.items():
        client = statistics.median(m[0] for m in values)
        srv = statistics.median(m[1] for m in values)
        rate = statistics.median(m[2] for m in values)
        print(f"{name:<36}{client:>14.2f}{srv:>15.2f}{rate:>11.0f}")
    print(f"baseline: {base}; medians of {repeats_of(args)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
