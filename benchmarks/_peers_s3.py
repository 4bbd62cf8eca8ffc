"""The ``s3`` task of ``bench_peers``: the same JPEGs from a moto S3 server, cold cache.

Reuses ``bench_pack``'s readers (LitData's chunks over ``s3://``, WebDataset's tars over presigned
HTTP URLs of the moto server, sdsnodes' packed shards over ``s3://``) and adds sdsnodes on the raw
files (``build_image_graph`` on an index of ``s3://`` URLs, no conversion) and mosaicml-streaming
on its own MDS shards (``MDSWriter``, 8 MB, {index, image bytes}; the conversion timed apart and
printed), called as a streaming user would: ``StreamingDataset(remote="s3://bench/mds",
local=<a fresh folder per epoch>, shuffle=True)`` in a torch ``DataLoader`` (batch 32, 2
workers), its boto3 client pointed at moto by ``S3_ENDPOINT_URL`` and the ``AWS_*`` credentials
in the environment (streaming's documented variables). Every epoch starts with an empty cache
folder (cold); the folders are kept until the task ends, under the bench data folder, not
``/tmp`` (``_common.cold_cache_folder`` says why: on this VM's ext4 without a journal, a file
created right after many deletions cost 0.3-0.9 ms of system CPU instead of 0.04). The system
CPU per file created, in that folder and in ``/tmp``, is printed first (``create_cost``).
Streaming's sample ids are checked to cover the epoch exactly once, the other rows' counts
against the number of images. Each row's note gives its ratio to the best peer (the fastest of
LitData, WebDataset and streaming).

The bound: the moto server's CPU seconds per GET (``psutil``, the server process), measured with
one ``fs.cat`` of every raw object (s3fs keeps many requests in flight); ``os.cpu_count()``
divided by that is the most GET/s the cores allow, one GET per raw image. It is measured before
each round of repeats and the median is used: one measure moved from 241 to 306 GET/s over ten
minutes of one evening (2026-12-04), as the machine's load moved. For every loader the
CPU per sample of the server and of the client (this process and its workers) during its epoch
is printed too: moto spent 10 ms per object under ``fs.cat`` but 4-5 ms per GET during
sdsnodes' raw-file epochs (2026-12-04), and on these shared cores the client's CPU counts
against the same cores. Bytes per epoch: the size of the objects each system reads (each is read once, cold).

The ceiling, printed beside the bound: the GET/s of sdsnodes' own GET path when one process
does nothing else (no cache, no decoding, 64 in flight), and the cores moto used meanwhile.

The server's processes (``--moto-processes``, default ``os.cpu_count()``): ``python -m
moto.server`` is one Python process, and its GIL holds it near one core (0.85-0.97 measured on
2026-12-05, under ``fs.cat`` and under our GETs alike), so the bound, which divides all the
cores by the CPU per GET, was not a rate that server could reach: the ceiling was 389-461 GET/s
against bounds of 467-519. So once every system's data is uploaded the server is forked into
that many processes on one port (``servers.s3.ForkedS3Server``: the same moto application in
the same werkzeug server, each process with a copy of the data, read-only from then on), and
the bound, the ceiling and every loader's epochs are measured on it; its CPU is the sum over
the processes. ``--moto-processes 1`` serves from one process, as the runs before did.
"""

from __future__ import annotations

import collections
import functools
import os
import shutil
import statistics
import tempfile
import time
from argparse import Namespace
from pathlib import Path

from benchmarks._common import (
    Result,
    cold_cache_folder,
    create_cost,
    format_table,
    in_turn,
    timed,
)
from benchmarks._peers import convert_mosaic
from benchmarks.bench_image import measure
from benchmarks.bench_pack import LIT_S3, PACKED_S3, WDS_S3, sds_epoch, upload_shards
from benchmarks.bench_remote import import_servers

RAW = "sdsnodes (raw files, s3://)"
MDS = "mosaicml-streaming (its MDS shards, s3://)"
PACKED, LIT, WDS = PACKED_S3, LIT_S3, WDS_S3
PEERS = (LIT, WDS, MDS)
PREFIXES = {LIT: "bench/lit", WDS: "bench/tars", MDS: "bench/mds", PACKED: "bench/packed",
            RAW: "bench/raw"}  # fmt: skip


def server_cpu(server) -> float:
    """CPU seconds (user + system) the moto server has used: its process and, once a
    ``ForkedS3Server`` has split, the processes it forked."""
    import psutil

    process = psutil.Process(server.pid)
    return sum(sum(p.cpu_times()[:2]) for p in (process, *process.children()))


def get_bound(server, keys: list[str]) -> tuple[float, float]:
    """(server CPU ms per GET, GET/s the cores allow) from one concurrent ``fs.cat(keys)``."""
    fs = server.fs()
    before = server_cpu(server)
    fs.cat(keys)
    per_get = (server_cpu(server) - before) / len(keys)
    return 1000 * per_get, (os.cpu_count() or 1) / per_get


SLOW_CREATE_MS = 0.1
"""System CPU ms per file created above which the run warns (0.02-0.04 normally, 0.3-0.9 right
after thousands of deletions nearby on ext4 without a journal)."""

CEILING_IN_FLIGHT = 64
"""GETs :func:`get_ceiling` keeps in flight (twice a preset's window per worker)."""


def get_ceiling(server, keys: list[str], dest: Path) -> tuple[float, float]:
    """(GET/s, cores the server used) when one process only downloads ``keys`` through
    sdsnodes' own GET path (``fetch_soon``, :data:`CEILING_IN_FLIGHT` in flight, into files
    under ``dest``; no cache, no decoding): how fast this server serves our GETs when the
    client costs least. moto is one Python process, so its GIL holds it near one core however
    many the machine has; the bound of :func:`get_bound` assumes it could use them all."""
    from sdsnodes.storage import fetch_soon

    dest.mkdir(parents=True, exist_ok=True)
    before, start = server_cpu(server), time.perf_counter()
    pending: collections.deque = collections.deque()
    for i, key in enumerate(keys):
        pending.append(fetch_soon(f"s3://{key}", dest / f"{i}", server.storage_options))
        if len(pending) >= CEILING_IN_FLIGHT:
            pending.popleft().result()
    for future in pending:
        future.result()
    wall = time.perf_counter() - start
    return len(keys) / wall, (server_cpu(server) - before) / wall


def run_s3(args: Namespace, paths: list[str], repeats: int) -> list[Result]:
    """Upload each system's data to moto, read it back cold ``repeats`` times; rows of samples/s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    servers = import_servers()
    os.environ.update(servers.s3.CLIENT_ENV)
    server = servers.s3.ForkedS3Server(args.moto_processes).start()  # split after the uploads
    os.environ["S3_ENDPOINT_URL"] = server.url  # mosaicml-streaming's boto3 endpoint
    work = cold_cache_folder(args.dir, "peers-s3-")
    tmp = Path(tempfile.mkdtemp(prefix="sds-bench-peers-s3-"))  # for create_cost only
    try:
        cost = create_cost(work)
        print(f"system CPU ms per file created: {cost:.3f} in the work folder "
              f"{work}, {create_cost(tmp):.3f} in {tmp.parent}", flush=True)  # fmt: skip
        if cost > SLOW_CREATE_MS:
            print(f"warning: creating a file costs {cost:.2f} ms of system CPU in {work.parent}, "
                  "as after many deletions on ext4 without a journal (a previous run's caches?): "
                  "the raw files' figures will be low; they are fair six minutes after the "
                  "deletions (see _common.cold_cache_folder)", flush=True)  # fmt: skip
        return _run(args, paths, repeats, server, work, pa, pq)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, paths, repeats, server, work, pa, pq) -> list[Result]:
    from benchmarks._peers_mds import mds_s3_epoch  # imports streaming

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
    mds_s, mds_dir = timed(lambda: convert_mosaic(paths, work / "mds"))
    fs.put(mds_dir + "/", "bench/mds/", recursive=True)
    print(f"conversion s (timed apart): mosaicml-streaming MDSWriter {mds_s:.2f}", flush=True)
    server.split()  # every object is uploaded; from here on the server is read-only
    bounds, ceilings = [], []  # measured before each round: moto's cost moves with the machine

    def measure_bound() -> None:
        ms_per_get, bound = get_bound(server, keys)
        bounds.append(bound)
        ceiling, cores = get_ceiling(server, keys, work / f"ceiling-{len(ceilings)}")
        ceilings.append(ceiling)
        print(f"s3: moto on 127.0.0.1 in {server.processes} process(es); server CPU {ms_per_get:.2f} "
              f"ms per GET ({count} in "
              f"flight) -> bound {bound:.0f} GET/s on {os.cpu_count()} CPUs (one GET per raw "
              f"image); ceiling {ceiling:.0f} GET/s (sdsnodes' GETs alone, "
              f"{CEILING_IN_FLIGHT} in flight, no decoding; the server used {cores:.2f} cores); "
              f"streaming's S3_ENDPOINT_URL={server.url}", flush=True)  # fmt: skip

    stored = {name: fs.du(prefix) for name, prefix in PREFIXES.items()}
    print("bytes per epoch (objects read): "
          + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in stored.items()),
          flush=True)  # fmt: skip
    loaders[RAW] = functools.partial(sds_epoch, raw_index, server.storage_options, n, batch)
    loaders[MDS] = functools.partial(mds_s3_epoch, "s3://bench/mds", count, n, batch)
    loaders = {name: loaders[name] for name in (LIT, WDS, MDS, PACKED, RAW)}
    rows = {name: Result(name, unit="samples/s", group="S3 cold cache", baseline=name == LIT)
            for name in loaders}  # fmt: skip
    rows[MDS].note = f"conversion (MDSWriter) {mds_s:.2f} s;"
    for r in range(repeats):
        measure_bound()
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
            # the cache folder stays until the task ends: see the module's docstring
    best = max((rows[p] for p in PEERS), key=lambda r: r.median)
    for row in rows.values():
        row.note = f"{row.note} {row.median / best.median:.2f}x the best peer ({best.name.split(' (')[0]})".strip()
    rows[PACKED].note += "; target >= 1.2x"
    bound = statistics.median(bounds)
    spread = (
        f" (median of {len(bounds)}: {min(bounds):.0f}-{max(bounds):.0f})"
        if len(bounds) > 1
        else ""
    )
    ceiling = statistics.median(ceilings)
    rows[RAW].note += (f" {rows[RAW].median / bound:.2f}x the bound {bound:.0f}/s{spread}; "
                       f"target >= 0.8x; {rows[RAW].median / ceiling:.2f}x the ceiling "
                       f"{ceiling:.0f}/s")  # fmt: skip
    return list(rows.values())


def summarize_s3(results: list[Result]) -> str:
    return format_table(results, title="peers: S3 (moto), cold cache (samples/s, higher is better)")
