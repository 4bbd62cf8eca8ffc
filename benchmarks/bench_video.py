"""16-frame clips/s of ``build_video_graph`` through ``StatefulDataLoader``, against hand-written
PyAV loops over the same files, with the same clip parameters and the same parallelism.

Loaders (each reads every video of the synthetic dataset once, one clip per video):

- **graph**: ``StatefulDataLoader(StreamingDataset(partial(build_video_graph, ...)),
  batch_size=None, num_workers=N)``, one full epoch (index reader, shuffler, downloader, decoder
  threads, evictor, batcher + collate, prefetcher, worker IPC).
- **hand-written loop** (the baseline): per video, seek to a random start (landing on the
  keyframe at or before it), decode ``num_frames`` frames at ``fps`` with swscale converting to
  RGB at the cover size (one ``VideoReformatter`` per clip, as a careful hand-written loop
  does: ``frame.reformat`` builds a new swscale context for every frame, about twice the cost),
  centre-crop, stack to uint8 [T, C, H, W]; run in a ``multiprocessing.Pool`` of N processes,
  and also in this single process.
- **full-decode-then-slice** (the common naive loader): decode every frame of the video to RGB at
  the source size, pick the clip's frames, resize them with ``torch.nn.functional.interpolate``
  (bilinear, antialias) and centre-crop; in a Pool of N processes.

Two tables: the full epoch including worker/pool start-up, and the steady state timed from the
first batch (or clip) delivered. Ratios are against the hand-written loop in a Pool of N.

Before timing, this process has imported what a training script using the graph has (torch,
torchdata, sdsnodes) plus PyAV (which every loader needs); the dataset is prepared in a
subprocess, so whatever else a loader needs (the graph's workers read the parquet index, which
imports ``pyarrow.dataset``) is paid by that loader, in each worker, every epoch.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
    silence_known_warnings,
    timed,
    write_json,
)

NAME = "video"
DESCRIPTION = (
    "16-frame clips/s: build_video_graph via StatefulDataLoader vs a hand-written PyAV "
    "seek-and-decode loop and full-decode-then-slice, same files and parallelism"
)

FULL = "full epoch (incl. worker start-up)"
STEADY = "steady state (from the first batch)"
_EPS = 1e-3  # s


@dataclass(frozen=True)
class Config:
    """One benchmark configuration (see ``--help``)."""

    num_videos: int
    seconds: float
    width: int
    height: int
    num_frames: int
    fps: float
    size: int
    batch_size: int
    num_workers: int
    num_threads: int
    download_threads: int
    repeats: int


@dataclass
class Epoch:
    """One timed pass: seconds to the end and to the first item, clips in all and in the first."""

    seconds: float
    first_seconds: float
    clips: int
    first_clips: int

    @property
    def full_rate(self) -> float:
        return self.clips / self.seconds

    @property
    def steady_rate(self) -> float:
        span = self.seconds - self.first_seconds
        rest = self.clips - self.first_clips
        return rest / span if rest > 0 and span > 0 else float("nan")


# -- the baselines: plain functions of (path, seed), run in a Pool --------------------------------


def _cover(height: int, width: int, size: int) -> tuple[int, int]:
    """Short side to ``size``, keeping the aspect ratio."""
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def _center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The centred ``size`` x ``size`` window of [..., H, W, C]."""
    h, w = array.shape[-3], array.shape[-2]
    top, left = (h - size) // 2, (w - size) // 2
    return array[..., top : top + size, left : left + size, :]


def handwritten_clip(task: tuple[str, int, int, float, int]) -> np.ndarray:
    """Seek-and-decode: uint8 [T, C, H, W] clip of ``num_frames`` frames at ``fps``."""
    import av
    from av.video.reformatter import VideoReformatter

    path, seed, num_frames, fps, size = task
    rng = np.random.default_rng(seed)
    reformatter = VideoReformatter()  # reuses its swscale context from frame to frame
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # as VideoClip's default
        duration = float(stream.duration * stream.time_base)
        t0 = rng.random() * max(0.0, duration - num_frames / fps)
        start = stream.start_time or 0
        container.seek(start + int(t0 / stream.time_base), stream=stream, backward=True)
        frames: list[np.ndarray] = []
        next_time = None
        for frame in container.decode(stream):
            now = float((frame.pts - start) * stream.time_base)
            if next_time is None:
                next_time = now  # the clip starts at the keyframe the seek landed on
            if now + _EPS < next_time:
                continue
            height, width = _cover(frame.height, frame.width, size)
            rgb = reformatter.reformat(
                frame, width=width, height=height, format="rgb24"
            ).to_ndarray()
            frames.append(_center_crop(rgb, size))  # [H, W, 3]
            next_time += 1.0 / fps
            if len(frames) == num_frames:
                break
    frames += frames[-1:] * (num_frames - len(frames))  # a short video: repeat the last frame
    return np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2))  # [T, C, H, W] uint8


def full_decode_clip(task: tuple[str, int, int, float, int]) -> np.ndarray:
    """Decode every frame to RGB, then slice and resize: uint8 [T, C, H, W]."""
    import av
    import torch

    path, seed, num_frames, fps, size = task
    rng = np.random.default_rng(seed)
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = float(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]  # [H, W, 3] each
    duration = len(frames) / rate
    t0 = rng.random() * max(0.0, duration - num_frames / fps)
    picks = [
        min(len(frames) - 1, math.floor((t0 + i / fps) * rate + _EPS)) for i in range(num_frames)
    ]
    clip = torch.from_numpy(np.stack([frames[i] for i in picks])).permute(
        0, 3, 1, 2
    )  # [T, C, H, W]
    height, width = _cover(clip.shape[2], clip.shape[3], size)
    clip = torch.nn.functional.interpolate(
        clip.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    clip = clip.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (height - size) // 2, (width - size) // 2
    return clip[:, :, top : top + size, left : left + size].contiguous().numpy()


def _pool_init() -> None:
    import torch

    torch.set_num_threads(1)  # as in DataLoader workers


def _epoch_of(items: Iterable[int], start: float) -> Epoch:
    """Consume ``items`` (clip counts per batch), timing from ``start``."""
    first = None
    clips = first_clips = 0
    for n in items:
        if first is None:
            first, first_clips = time.perf_counter() - start, n
        clips += n
    if first is None:
        raise RuntimeError("the loader yielded nothing")
    return Epoch(time.perf_counter() - start, first, clips, first_clips)


def _tasks(paths: Sequence[str], cfg: Config, repeat: int) -> list[tuple]:
    return [
        (p, repeat * 1_000_003 + i, cfg.num_frames, cfg.fps, cfg.size) for i, p in enumerate(paths)
    ]


def run_pool(fn: Callable, paths: Sequence[str], cfg: Config, repeat: int) -> Epoch:
    """``fn`` over every video in a Pool of ``cfg.num_workers`` processes (start-up timed)."""
    tasks = _tasks(paths, cfg, repeat)
    start = time.perf_counter()
    with multiprocessing.Pool(cfg.num_workers, initializer=_pool_init) as pool:
        return _epoch_of((_check(c, cfg) for c in pool.imap(fn, tasks)), start)


def run_inline(fn: Callable, paths: Sequence[str], cfg: Config, repeat: int) -> Epoch:
    """``fn`` over every video in this process."""
    tasks = _tasks(paths, cfg, repeat)
    start = time.perf_counter()
    return _epoch_of((_check(fn(t), cfg) for t in tasks), start)


def _check(clip: np.ndarray, cfg: Config) -> int:
    expected = (cfg.num_frames, 3, cfg.size, cfg.size)
    if clip.shape != expected or clip.dtype != np.uint8:
        raise RuntimeError(
            f"a baseline produced {clip.dtype} {clip.shape}, expected uint8 {expected}"
        )
    return 1


# -- the graph --------------------------------------------------------------------------------------


def run_graph(index: Path, cache_dir: Path, cfg: Config, repeat: int) -> Epoch:
    """One epoch of ``build_video_graph`` through ``StatefulDataLoader`` (start-up timed)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import (
        CacheOptions,
        ErrorOptions,
        FetchOptions,
        StreamingDataset,
        build_video_graph,
    )

    factory = functools.partial(
        build_video_graph, str(index), num_frames=cfg.num_frames, fps=cfg.fps, size=cfg.size,
        batch_size=cfg.batch_size, num_threads=cfg.num_threads,
        fetch=FetchOptions(max_in_flight=cfg.download_threads), cache=CacheOptions(str(cache_dir)),
        errors=ErrorOptions(on_error="raise"),
        seed=repeat,
    )  # fmt: skip
    expected = (cfg.num_frames, 3, cfg.size, cfg.size)

    def clips(loader: Iterable[dict]) -> Iterable[int]:
        for batch in loader:
            video = batch["video"]  # [B, T, C, H, W] uint8
            if tuple(video.shape[1:]) != expected:
                raise RuntimeError(
                    f"the graph produced {tuple(video.shape)}, expected [B, *{expected}]"
                )
            yield int(video.shape[0])

    start = time.perf_counter()
    loader = StatefulDataLoader(
        StreamingDataset(factory), batch_size=None, num_workers=cfg.num_workers
    )
    return _epoch_of(clips(loader), start)


# -- the benchmark ----------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser)
    add = parser.add_argument
    add(
        "--num-videos",
        type=int,
        default=None,
        help="videos = clips per epoch (default 64, 16 with --quick)",
    )
    add("--seconds", type=float, default=3.0, help="length of each video in s (default 3)")
    add("--width", type=int, default=256, help="source width in px (default 256)")
    add("--height", type=int, default=256, help="source height in px (default 256)")
    add("--num-frames", type=int, default=16, help="frames per clip T (default 16)")
    add("--fps", type=float, default=8.0, help="clip frame rate in frames/s (default 8)")
    add("--size", type=int, default=128, help="output frames are size x size px (default 128)")
    add("--batch-size", type=int, default=4, help="the graph's batch size (default 4)")
    add(
        "--num-workers", type=int, default=2, help="DataLoader workers = Pool processes (default 2)"
    )
    add(
        "--num-threads",
        type=int,
        default=4,
        help="the graph's decoding threads per worker (default 4)",
    )
    add(
        "--download-threads",
        type=int,
        default=8,
        help="the graph's download threads per worker (default 8)",
    )
    args = parser.parse_args(argv)
    for name in (
        "num_videos",
        "seconds",
        "width",
        "height",
        "num_frames",
        "fps",
        "size",
        "batch_size",
        "num_workers",
    ):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')}={value} must be > 0")
    if args.num_threads < 0 or args.download_threads < 0:
        parser.error("--num-threads and --download-threads must be >= 0")
    return args


def prepare(root: Path, cfg: Config) -> Path:
    """Write (or find) the synthetic dataset, in a subprocess so this one stays as a training
    script's would be (``make_video_dataset`` reads parquet with ``pyarrow.dataset``)."""
    code = (
        "import sys; from sdsnodes._synthetic import make_video_dataset; "
        "print(make_video_dataset(sys.argv[1], num_videos=int(sys.argv[2]), seconds=float(sys.argv[3]), "
        "width=int(sys.argv[4]), height=int(sys.argv[5]), progress=sys.stderr.isatty()))"
    )
    argv = [str(root), str(cfg.num_videos), str(cfg.seconds), str(cfg.width), str(cfg.height)]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, text=True, check=True
    )
    return Path(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_warnings()
    args = parse(argv)
    import av  # noqa: F401 - every loader needs it: imported once, here, for all of them
    import pyarrow.parquet as pq

    cfg = Config(
        num_videos=args.num_videos or (16 if args.quick else 64), seconds=args.seconds,
        width=args.width, height=args.height, num_frames=args.num_frames, fps=args.fps,
        size=args.size, batch_size=args.batch_size, num_workers=args.num_workers,
        num_threads=args.num_threads, download_threads=args.download_threads,
        repeats=repeats_of(args),
    )  # fmt: skip
    root = (args.dir or default_data_dir()) / (
        f"video-n{cfg.num_videos}-{cfg.seconds:g}s-{cfg.width}x{cfg.height}"
    )
    ready, index = timed(lambda: prepare(root, cfg))
    paths = pq.ParquetFile(index).read(columns=["video"])["video"].to_pylist()
    print(
        f"dataset: {len(paths)} H.264 videos of {cfg.seconds:g} s at 24/30 fps, {cfg.width}x"
        f"{cfg.height} (every 4th wider) in {root} (ready in {ready:.1f} s)\n"
        f"clips: {cfg.num_frames} frames at {cfg.fps:g} fps, {cfg.size}x{cfg.size} px; "
        f"{cfg.num_workers} workers; graph: batch {cfg.batch_size}, {cfg.num_threads} decoding and "
        f"{cfg.download_threads} download threads per worker; {cfg.repeats} repeat(s), order "
        "alternating",
        flush=True,
    )
    n = cfg.num_workers
    graph = f"sdsnodes graph ({n} workers x {cfg.num_threads} threads)"
    hand = f"hand-written loop (Pool of {n})"
    loaders: dict[str, Callable[[int], Epoch]] = {
        graph: lambda r: run_graph(index, root / "cache", cfg, r),
        hand: lambda r: run_pool(handwritten_clip, paths, cfg, r),
        "hand-written loop (1 process)": lambda r: run_inline(handwritten_clip, paths, cfg, r),
        f"full-decode-then-slice (Pool of {n})": lambda r: run_pool(
            full_decode_clip, paths, cfg, r
        ),
    }
    rows = {
        (group, name): Result(name, unit="clips/s", group=group, baseline=name == hand)
        for group in (FULL, STEADY)
        for name in loaders
    }
    firsts: dict[str, list[float]] = {name: [] for name in loaders}
    for repeat in range(cfg.repeats):
        for name in in_turn(list(loaders), repeat):
            epoch = loaders[name](repeat)
            if epoch.clips != len(paths):
                raise RuntimeError(f"{name} yielded {epoch.clips} clips, expected {len(paths)}")
            rows[FULL, name].values.append(epoch.full_rate)
            rows[STEADY, name].values.append(epoch.steady_rate)
            firsts[name].append(epoch.first_seconds)
            print(
                f"  repeat {repeat + 1}/{cfg.repeats}  {name}: {epoch.clips} clips in "
                f"{epoch.seconds:.2f} s, the first after {epoch.first_seconds:.2f} s",
                flush=True,
            )
    for name, values in firsts.items():
        rows[FULL, name].note = f"1st after {statistics.median(values):.2f} s"
    results = list(rows.values())
    print()
    print(
        format_table(
            results,
            title=f"video: {cfg.num_frames}-frame clips/s at {cfg.fps:g} fps, {cfg.size}x{cfg.size} px",
        )
    )
    print(
        "steady state counts the clips after the first batch over the time after it; the graph "
        "works ahead while its first batch is pending\n(per worker: decoding threads, Prefetcher "
        "and DataLoader prefetch), so on a short epoch its steady-state figure over-counts."
    )
    if args.json:
        path = write_json(NAME, results, {**vars(cfg), "dir": str(root)})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
