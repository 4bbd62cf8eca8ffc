"""Rotation and the decoded-sample cache on remote clips: samples/s with and without.

Data: ``--num-videos`` (default 32; 8 with ``--quick``) small real H.264 mp4 files of
``--video-seconds`` (2 s), 256x192 px (``make_video_dataset``), served by the aiohttp test server
(``tests/servers/http.py``) on 127.0.0.1 with ``--latency-ms`` (30 ms) of delay injected per
request: the latency of a real object store. The graph is ``build_video_graph`` (8-frame clips at
8 fps, 64x64 px, batches of 4, ``num_threads`` 2, in this process through ``torchdata.nodes.Loader``).

Two tables, samples/s over a whole epoch from creating the loader to its last batch:

- **rotation**: the graph without rotation (*the baseline*), each on a fresh, empty cache
  directory (a cold cache: every clip is downloaded and decoded), against the same graph with
  ``rotation=RotationOptions(times=4, window=8)`` in memory and on disk: the same downloads and
  decodes yield 4 times the samples. The issue's target is >= 3x.
- **decoded cache**: ``decoded_cache=DecodedCacheOptions()`` on a fresh cache directory: epoch 1
  (*the baseline*: download, decode and write each entry) against epoch 2 of the same loader
  (entries read back: no download, no decode). The target is >= 3x. The note gives the disk bytes
  of the entries per sample (the cache directory's ledger bytes minus the downloaded videos')
  beside the bytes of the decoded clip (8 x 3 x 64 x 64 uint8 = 98,304 B).

Each measurement is repeated ``--repeats`` times (default 3), alternating the order, after one
unmeasured epoch (imports, codec start-up).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
    write_json,
)
from benchmarks.bench_remote import import_servers, silence_worker_warnings, small_videos

NAME = "rotation"
DESCRIPTION = (
    "rotation k=4 vs no rotation, and DecodedCache epoch 2 vs epoch 1, samples/s of the video "
    "preset on remote clips (HTTP server with injected latency)"
)
CLIP_BYTES = 8 * 3 * 64 * 64  # one decoded clip, uint8 [T, C, H, W]


def graph(index: pa.Table, cache_dir: Path, storage_options: dict, **kw):
    from sdsnodes import build_video_graph
    from sdsnodes.options import CacheOptions, FetchOptions

    return build_video_graph(
        index, num_frames=8, fps=8.0, size=64, batch_size=4, num_threads=2, seed=0,
        caption_column=None, cache=CacheOptions(cache_dir=cache_dir),
        fetch=FetchOptions(storage_options=storage_options), **kw,
    )  # fmt: skip


def epoch_rate(loader) -> float:
    """Samples/s of one epoch of ``loader`` (from its start to its last batch)."""
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["__key__"])
    return n / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_rotation", description=DESCRIPTION)
    add_common_args(parser, repeats=3)
    parser.add_argument("--num-videos", type=int, default=None, help="clips (32; 8 with --quick)")
    parser.add_argument("--video-seconds", type=float, default=2.0)
    parser.add_argument("--latency-ms", type=float, default=30.0, help="delay per request")
    args = parser.parse_args(argv)
    silence_worker_warnings()
    from torchdata.nodes import Loader

    from sdsnodes import DecodedCacheOptions, RotationOptions
    from sdsnodes.cache import Cache

    repeats = repeats_of(args)
    count = args.num_videos or (8 if args.quick else 32)
    data = (args.dir or default_data_dir()) / f"rotation-{count}x{args.video_seconds:g}s"
    blobs = small_videos(data, count, args.video_seconds)
    server = import_servers().http.HTTPServer().start()
    try:
        urls = []
        for i, blob in enumerate(blobs):
            (server.root / f"{i:05d}.mp4").write_bytes(blob)
            urls.append(server.url_for(f"{i:05d}.mp4"))
        if args.latency_ms > 0:
            server.faults(delay_s=args.latency_ms / 1000, path="/")
        index = pa.table({"video": urls})
        video_bytes = sum(len(b) for b in blobs)
        plain = Result("no rotation", unit="samples/s", group="rotation", baseline=True)
        memory = Result("rotation k=4, memory", unit="samples/s", group="rotation")
        disk = Result("rotation k=4, disk", unit="samples/s", group="rotation")
        first = Result("decoded cache, epoch 1", unit="samples/s", group="decoded cache")
        first.baseline = True
        second = Result("decoded cache, epoch 2", unit="samples/s", group="decoded cache")
        entry_bytes: list[float] = []
        options = server.storage_options
        rotations = {
            "no rotation": (plain, None),
            "memory": (memory, RotationOptions(times=4, window=8)),
            "disk": (disk, RotationOptions(times=4, window=8, medium="disk")),
        }
        with tempfile.TemporaryDirectory() as tmp:  # warm-up, not measured: imports, codecs
            epoch_rate(Loader(graph(index, Path(tmp), options)))
        for r in range(repeats):
            for name in in_turn(list(rotations), r):
                row, rotation = rotations[name]
                with tempfile.TemporaryDirectory() as tmp:
                    loader = Loader(graph(index, Path(tmp), options, rotation=rotation))
                    row.values.append(epoch_rate(loader))
            with tempfile.TemporaryDirectory() as tmp:
                g = graph(index, Path(tmp), options, decoded_cache=DecodedCacheOptions())
                loader = Loader(g)
                first.values.append(epoch_rate(loader))
                second.values.append(epoch_rate(loader))
                with Cache(tmp) as cache:
                    entry_bytes.append((cache.stats()["bytes"] - video_bytes) / count)
        per = sorted(entry_bytes)[len(entry_bytes) // 2]
        second.note = f"entries: {per:,.0f} B/sample on disk (decoded clip {CLIP_BYTES:,} B)"
        rows = [plain, memory, disk, first, second]
        title = (
            f"rotation: {count} clips of {args.video_seconds:g} s on the HTTP test server, "
            f"{args.latency_ms:g} ms per request; targets >= 3x"
        )
        print(format_table(rows, title))
        if args.json:
            write_json(NAME, rows, {**vars(args), "num_videos": count, "repeats": repeats})
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
