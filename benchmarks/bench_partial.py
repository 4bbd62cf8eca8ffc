"""Partial reads vs whole-file download: the latency of one 16-frame clip of a 60-s video on a
moto S3 server (127.0.0.1), and the bytes that travel for it, cold cache.

Data: one real H.264 mp4 of ``--seconds`` (60) at 24 fps, ``--width`` x ``--height``
(480x272), a keyframe every 2 s, moov first (fast start), with film grain so the bit rate is
that of real footage (about 3 Mbit/s here), uploaded to a moto S3 server started here.

Loaders, each per repeat on a fresh, empty cache directory, all decoding the same clip (16
frames at 8 fps = 2 s, at a random start drawn from the repeat's seed) with ``VideoClip``:

- **whole-file download** (*the baseline*): ``CachingDownloader.process`` (the graph's
  per-sample download: the object copied whole into the cache) then ``VideoClip`` on the file.
- **partial reads, N KiB blocks**: ``RangeReader.process`` (the graph's per-sample open of a
  :class:`BlockFile`: the object's size and its first block) then ``VideoClip`` on the block
  file, which fetches only the blocks it reads (the index and the GOPs around the clip).
- **warm cache**: the same clip again, on the cache the whole-file run (or the 1 MiB partial
  run) filled: nothing travels; the difference is the cost of reading through the block file.

The table gives clips/s (1 / latency, higher is better) and, in the note, the median latency
and the bytes written into the cache (= bytes transferred) per clip. On loopback bytes cost
almost nothing, so a last line estimates the latency on a ``--link-mbps`` link (the measured
latency plus bytes / bandwidth; request round trips not counted).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
    silence_known_warnings,
    write_json,
)

NAME = "partial"
DESCRIPTION = (
    "one 16-frame clip of a 60-s video on moto S3: latency and bytes moved, partial reads "
    "(block cache) vs whole-file download, cold cache"
)
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
WHOLE = "whole-file download"
WARM = "partial reads, warm cache"
WHOLE_WARM = "whole file, warm cache"


@dataclass(frozen=True)
class Config:
    """One benchmark configuration (see ``--help``)."""

    seconds: float
    width: int
    height: int
    fps: int
    gop: int
    block_sizes: tuple[int, ...]
    num_frames: int
    clip_fps: float
    repeats: int


def write_grainy_video(path: Path, cfg: Config, seed: int = 0) -> None:
    """A fast-start H.264 mp4 of a moving gradient with film grain (noise of +-10 levels), so
    it compresses like real footage; written under a temporary name, then renamed."""
    import av

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0 : cfg.height, 0 : cfg.width]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.mp4")
    with av.open(str(tmp), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=cfg.fps)
        stream.width, stream.height, stream.pix_fmt = cfg.width, cfg.height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(cfg.gop), "crf": "20"}
        for i in range(round(cfg.seconds * cfg.fps)):
            base = ((xs + ys + 4 * i) % 256).astype(np.int16)  # [H, W]
            rgb = np.stack([base, base * 2 % 256, 255 - base], axis=-1)  # [H, W, 3]
            rgb += rng.integers(-10, 11, rgb.shape, dtype=np.int16)
            frame = av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, cfg.fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    os.replace(tmp, path)


def start_s3() -> Any:
    """moto's S3 server from ``tests/servers`` (the fake credentials set in this process)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.append(str(TESTS_DIR))  # appended: nothing there may shadow an installed module
    import servers.s3

    os.environ.update(servers.s3.CLIENT_ENV)
    server = servers.s3.S3Server().start()
    server.make_bucket("bench")
    return server


def one_clip(make_node: Callable[[str], Any], url: str, cache_dir: Path, seed: int) -> dict:
    """Open/download ``url`` with the node ``make_node(cache_dir)`` builds, decode one clip;
    return its latency (s), the bytes written into the cache, and the clip."""
    from sdsnodes import VideoClip
    from sdsnodes.cache import Cache
    from sdsnodes.nodes._cache_ref import release

    node = make_node(str(cache_dir))
    codec = VideoClip(16, fps=8.0, with_info=True)
    before = Cache(cache_dir).stats()["bytes_fetched"] if cache_dir.exists() else 0
    start = time.perf_counter()
    sample = node.process({"__key__": "0", "__index__": 0, "__epoch__": 0, "video": url})
    clip = codec(sample["video"], np.random.default_rng(seed))
    seconds = time.perf_counter() - start
    if hasattr(sample["video"], "close"):
        sample["video"].close()
    release(sample)
    moved = Cache(cache_dir).stats()["bytes_fetched"] - before
    return {"seconds": seconds, "bytes": moved, "clip": clip.value}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser)
    add = parser.add_argument
    add("--seconds", type=float, default=None, help="video length in s (60; 20 with --quick)")
    add("--width", type=int, default=None, help="px (480; 320 with --quick)")
    add("--height", type=int, default=None, help="px (272; 240 with --quick)")
    add("--block-sizes", default="256,1024,4096", help="KiB per block, comma-separated")
    add(
        "--link-mbps", type=float, default=200.0,
        help="bandwidth of the estimate printed after the table, in Mbit/s (default 200)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_warnings()
    args = parse(argv)
    import pyarrow as pa

    from sdsnodes.nodes.downloader import CachingDownloader
    from sdsnodes.nodes.index_reader import IndexReader
    from sdsnodes.nodes.range_reader import RangeReader
    from sdsnodes.options import CacheOptions, FetchOptions

    cfg = Config(
        seconds=args.seconds or (20.0 if args.quick else 60.0),
        width=args.width or (320 if args.quick else 480),
        height=args.height or (240 if args.quick else 272),
        fps=24, gop=48,
        block_sizes=tuple(int(k) << 10 for k in args.block_sizes.split(",")),
        num_frames=16, clip_fps=8.0, repeats=repeats_of(args),
    )  # fmt: skip
    folder = (args.dir or default_data_dir()) / "partial"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"grain-{cfg.seconds:g}s-{cfg.width}x{cfg.height}-gop{cfg.gop}.mp4"
    if not video.exists():
        write_grainy_video(video, cfg)
    size = video.stat().st_size
    server = start_s3()
    workdir = Path(tempfile.mkdtemp(prefix="sds-bench-partial-"))
    try:
        options = server.storage_options
        url = "s3://bench/videos/long.mp4"
        server.fs().put_file(str(video), url)
        dummy = IndexReader(pa.table({"video": [url]}))  # a source the nodes need, never read

        def whole(cache_dir: str) -> Any:
            return CachingDownloader(
                dummy,
                ["video"],
                cache=CacheOptions(cache_dir),
                fetch=FetchOptions(storage_options=options),
            )

        def partial(block: int) -> Callable[[str], Any]:
            return lambda cache_dir: RangeReader(
                dummy,
                ["video"],
                cache=CacheOptions(cache_dir),
                fetch=FetchOptions(storage_options=options),
                block_size=block,
            )

        loaders: dict[str, Callable[[str], Any]] = {WHOLE: whole}
        for block in cfg.block_sizes:
            loaders[f"partial reads, {block >> 10} KiB blocks"] = partial(block)
        one_clip(whole, url, workdir / "warm-up", 0)  # connections, imports: paid by nobody
        print(
            f"video: {size / 2**20:.1f} MiB, {cfg.seconds:g} s H.264 {cfg.width}x{cfg.height} at "
            f"{cfg.fps} fps ({size * 8 / cfg.seconds / 1e6:.1f} Mbit/s), keyframe every "
            f"{cfg.gop / cfg.fps:g} s, moov first, on moto S3; clip: {cfg.num_frames} frames at "
            f"{cfg.clip_fps:g} fps; {cfg.repeats} repeat(s), cold cache each",
            flush=True,
        )
        default = 1 << 20 if 1 << 20 in cfg.block_sizes else cfg.block_sizes[0]
        warm_after = f"partial reads, {default >> 10} KiB blocks"
        names = [*loaders, WHOLE_WARM, WARM]
        rows = {n: Result(n, unit="clips/s", baseline=n == WHOLE) for n in names}
        seconds: dict[str, list[float]] = {n: [] for n in names}
        moved: dict[str, list[int]] = {n: [] for n in names}
        for repeat in range(cfg.repeats):
            clips = {}
            for name in in_turn(list(loaders), repeat):
                cache_dir = workdir / f"r{repeat}-{len(clips)}"
                out = one_clip(loaders[name], url, cache_dir, seed=repeat)
                clips[name] = out["clip"]
                seconds[name].append(out["seconds"])
                moved[name].append(out["bytes"])
                warm_name = {warm_after: WARM, WHOLE: WHOLE_WARM}.get(name)
                if warm_name is not None:  # the same clip again, on the cache just filled
                    warm = one_clip(loaders[name], url, cache_dir, seed=repeat)
                    seconds[warm_name].append(warm["seconds"])
                    moved[warm_name].append(warm["bytes"])
            if any(not c.equal(clips[WHOLE]) for c in clips.values()):
                raise RuntimeError("partial reads decoded another clip than the whole file")
            print(f"  repeat {repeat + 1}/{cfg.repeats}: " + ", ".join(
                f"{n} {s[-1] * 1000:.0f} ms / {moved[n][-1] / 2**20:.2f} MiB"
                for n, s in seconds.items()
            ), flush=True)  # fmt: skip
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    for name, row in rows.items():
        row.values = [1 / s for s in seconds[name]]
        mib = statistics.median(moved[name]) / 2**20
        row.note = (
            f"{statistics.median(seconds[name]) * 1000:.0f} ms/clip, {mib:.2f} MiB moved "
            f"({mib * 2**20 / size:.3f} of the file)"
        )
    results = list(rows.values())
    print()
    print(format_table(results, title=f"partial: one {cfg.num_frames}-frame clip of a "
                                      f"{cfg.seconds:g}-s video on moto S3, cold cache"))  # fmt: skip
    print(
        f"warm cache: the same clip again, from the file (or the blocks of the {warm_after} "
        "run) cached just before."
    )
    link = args.link_mbps * 1e6 / 8  # bytes/s
    print(
        f"estimate on a {args.link_mbps:g} Mbit/s link instead of loopback (median latency + "
        "median bytes / bandwidth): "
        + ", ".join(
            f"{n} {(statistics.median(seconds[n]) + statistics.median(moved[n]) / link) * 1000:.0f} ms"
            for n in names
        )
    )
    if args.json:
        path = write_json(NAME, results, {**vars(cfg), "video_bytes": size, "dir": str(folder)})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
