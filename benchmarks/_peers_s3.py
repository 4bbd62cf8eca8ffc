"""The ``s3`` task of ``bench_peers``: the same JPEGs from a moto S3 server, cold cache.

Reuses ``bench_pack``'s readers (LitData's chunks over ``s3://``, WebDataset's tars over presigned
HTTP URLs of the moto server, sdsnodes' packed shards over ``s3://``) and adds sdsnodes on the raw
files (``build_image_graph`` on an index of ``s3://`` URLs, no conversion). MosaicML streaming is
not run here (not wired to moto yet; the line printed says so).

The bound: the moto server's CPU seconds per GET (``psutil``, the server process), measured with
one ``fs.cat`` of every raw object (s3fs keeps many requests in flight); ``os.cpu_count()``
divided by that is the most GET/s the cores allow, one GET per raw image. For every loader the
CPU per sample of the server and of the client (this process and its workers) during its epoch
is printed too: moto spent 10 ms per object under ``fs.cat`` but 4-5 ms per GET during
sdsnodes' raw-file epochs (2026-12-04), and on these shared cores the client's CPU counts
against the same cores. Bytes per epoch: the size of the objects each system reads (each is read once, cold).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from argparse import Namespace
from pathlib import Path

from benchmarks._common import Result, format_table, in_turn
from benchmarks.bench_image import measure
from benchmarks.bench_pack import LIT_S3, PACKED_S3, WDS_S3, sds_epoch, upload_shards
from benchmarks.bench_remote import import_servers

RAW = "sdsnodes (raw files, s3://)"
PACKED, LIT, WDS = PACKED_S3, LIT_S3, WDS_S3
PREFIXES = {LIT: "bench/lit", WDS: "bench/tars", PACKED: "bench/packed", RAW: "bench/raw"}


def server_cpu(server) -> float:
    """CPU seconds (user + system) the moto server process has used."""
    import psutil

    return sum(psutil.Process(server.pid).cpu_times()[:2])


def get_bound(server, keys: list[str]) -> tuple[float, float]:
    """(server CPU ms per GET, GET/s the cores allow) from one concurrent ``fs.cat(keys)``."""
    fs = server.fs()
    before = server_cpu(server)
    fs.cat(keys)
    per_get = (server_cpu(server) - before) / len(keys)
    return 1000 * per_get, (os.cpu_count() or 1) / per_get


def run_s3(args: Namespace, paths: list[str], repeats: int) -> list[Result]:
    """Upload each system's data to moto, read it back cold ``repeats`` times; rows of samples/s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    servers = import_servers()
    os.environ.update(servers.s3.CLIENT_ENV)
    server = servers.s3.S3Server().start()
    work = Path(tempfile.mkdtemp(prefix="sds-bench-peers-s3-"))
    try:
        return _run(args, paths, repeats, server, work, pa, pq)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


def _run(args, paths, repeats, server, work, pa, pq) -> list[Result]:
    n, batch, count = args.num_workers, args.batch_size, len(paths)
    captions = [str(i) for i in range(count)]
    fs = server.fs()
    server.make_bucket("bench")
    keys = [f"bench/raw/{i:06d}.jpg" for i in range(count)]
    for path, key in zip(paths, keys):
        fs.put_file(path, key)
    raw_index = str(work / "raw.parquet")
    pq.write_table(pa.table({"image": [f"s3://{k}" for k in keys], "caption": captions}),
                   raw_index)  # fmt: skip
    local_index = str(work / "local.parquet")
    pq.write_table(pa.table({"image": list(paths), "caption": captions}), local_index)
    loaders = upload_shards(server, work, paths, captions, local_index, n, batch)
    ms_per_get, bound = get_bound(server, keys)
    print(f"s3: moto on 127.0.0.1; server CPU {ms_per_get:.2f} ms per GET ({count} in flight) "
          f"-> bound {bound:.0f} GET/s on {os.cpu_count()} CPUs (one GET per raw image); "
          "mosaicml-streaming: not run against moto", flush=True)  # fmt: skip
    stored = {name: fs.du(prefix) for name, prefix in PREFIXES.items()}
    print("bytes per epoch (objects read): "
          + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in stored.items()),
          flush=True)  # fmt: skip
    loaders[RAW] = functools.partial(sds_epoch, raw_index, server.storage_options, n, batch)
    rows = {name: Result(name, unit="samples/s", group="S3 cold cache", baseline=name == LIT)
            for name in loaders}  # fmt: skip
    for r in range(repeats):
        for name in in_turn(list(loaders), r):
            cache = tempfile.mkdtemp(prefix="cache-", dir=work)
            before = server_cpu(server)
            wall, cpu, got = measure(functools.partial(loaders[name], cache))
            served = server_cpu(server) - before
            if got != count:
                rows[name].note = f"delivered {got} of {count}"
            rows[name].values.append(got / wall)
            print(f"  repeat {r + 1}/{repeats}  {name}: {wall:.2f} s, {got} samples; CPU ms per "
                  f"sample: client {1000 * cpu / got:.2f}, server {1000 * served / got:.2f}",
                  flush=True)  # fmt: skip
            shutil.rmtree(cache, ignore_errors=True)
    best = max(rows[LIT].median, rows[WDS].median)
    rows[PACKED].note += f" {rows[PACKED].median / best:.2f}x the best peer; target >= 1.2x"
    rows[RAW].note += f" {rows[RAW].median / bound:.2f}x the bound {bound:.0f}/s; target >= 0.8x"
    return list(rows.values())


def summarize_s3(results: list[Result]) -> str:
    return format_table(results, title="peers: S3 (moto), cold cache (samples/s, higher is better)")
