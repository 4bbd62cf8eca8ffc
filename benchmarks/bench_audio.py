"""10-s audio clips resampled 44.1 → 16 kHz mono: ``build_audio_graph`` through
``StatefulDataLoader`` (2 workers) against a bare PyAV + torchaudio loop over the same files.

Data: ``--num-files`` (64) FLAC files of ``--seconds`` (30) s, 44.1 kHz stereo (16-bit;
``sdsnodes._synthetic.write_audio``: tones whose loudness steps every second).

Loaders, each reading one 10-s crop per file at a random (seeded) start, output float32
[1, 160000] (mono, 16 kHz):

- **sdsnodes graph**: ``StatefulDataLoader(StreamingDataset(partial(build_audio_graph,
  sample_rate=16000, channels=1, duration=10, batch_size=16, num_threads=--num-threads)),
  batch_size=None, num_workers=2)``: one full epoch, worker start-up included.
- **bare PyAV + torchaudio loop** (*the baseline*, in a ``multiprocessing.Pool`` of 2, 1 torch
  thread each): ``av.open``, seek to the start, decode frames until 10 s are covered, to float32,
  mean to mono, ``torchaudio.functional.resample(wave, 44100, 16000)``, cut to 160000 samples;
  also in this process alone (with 1 torch thread too: torch's intra-op pool only adds
  overhead to one clip's resampling on a busy machine).

Two groups: clips per wall second (the note gives output audio samples/s), and clips per CPU
second (this process and its reaped children), the throughput per core used.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable, Sequence
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
    write_json,
)
from benchmarks.bench_image import graph_epoch, measure, pool_map

NAME = "audio"
DESCRIPTION = (
    "10-s audio clips 44.1->16 kHz mono: build_audio_graph (2 workers) vs a bare PyAV + "
    "torchaudio loop, clips (and samples) per wall and per CPU second"
)
SOURCE_RATE = 44100
RATE = 16000
WALL = "clips per wall second"
CORE = "clips per CPU second (per core used)"


def bare_clip(task: tuple[str, int, float]):
    """The baseline: a ``duration``-s crop at a random start, mono, resampled to 16 kHz;
    float32 [1, duration * 16000]."""
    import av
    import torch
    import torchaudio.functional

    path, seed, duration = task
    with av.open(path) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        total = float(stream.duration * stream.time_base)
        first = int(np.random.default_rng(seed).random() * max(0.0, total - duration) * rate)
        need = math.ceil(duration * rate)
        container.seek(int(first / rate / stream.time_base), stream=stream)  # a frame before
        chunks, have = [], 0
        for frame in container.decode(stream):
            array = frame.to_ndarray()  # s16 packed: [1, k * C]
            if not frame.format.is_planar:
                array = array.reshape(-1, len(frame.layout.channels)).T  # [C, k]
            samples = array.astype(np.float32) / 32768.0
            position = round(frame.pts * stream.time_base * rate)
            skip = max(0, first - position)  # the part of the frame before the crop
            chunks.append(samples[:, skip:])
            have += samples.shape[1] - skip
            if have >= need:
                break
    wave = torch.from_numpy(np.concatenate(chunks, axis=1)[:, :need]).mean(0, keepdim=True)
    wave = torchaudio.functional.resample(wave, rate, RATE)  # [1, ~duration * 16000]
    return wave[:, : round(duration * RATE)]


def inline(tasks: Sequence[tuple[str, int, float]]) -> int:
    """:func:`bare_clip` over ``tasks`` in this process, with 1 torch thread (as in the Pool)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sum(1 for task in tasks if bare_clip(task).shape[1])
    finally:
        torch.set_num_threads(threads)


def make_files(folder: Path, count: int, seconds: float) -> list[str]:
    """``count`` FLAC files of ``seconds`` s at 44.1 kHz stereo (kept between runs)."""
    from sdsnodes._synthetic import write_audio

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.flac"
        if not path.exists():
            tmp = folder / f".{i:05d}.{os.getpid()}.flac"
            write_audio(tmp, seconds=seconds, sample_rate=SOURCE_RATE, channels=2)
            os.replace(tmp, path)
        paths.append(str(path))
    return paths


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser)
    add = parser.add_argument
    add("--num-files", type=int, default=None, help="FLAC files = clips (64; 8 with --quick)")
    add("--seconds", type=float, default=None, help="length of each file in s (30; 12 --quick)")
    add("--duration", type=float, default=10.0, help="clip length in s (10)")
    add("--num-workers", type=int, default=2, help="DataLoader workers = Pool processes (2)")
    add("--num-threads", type=int, default=4, help="the graph's decoding threads per worker (4)")
    add("--batch-size", type=int, default=16, help="the graph's batch size (16)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_warnings()
    args = parse(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdsnodes import CacheOptions, ErrorOptions, build_audio_graph

    repeats = repeats_of(args)
    count = args.num_files or (8 if args.quick else 64)
    seconds = args.seconds or (12.0 if args.quick else 30.0)
    if seconds < args.duration:
        raise SystemExit(f"--seconds={seconds} must be >= --duration={args.duration}")
    root = (args.dir or default_data_dir()) / "audio"
    paths = make_files(root / f"flac-{seconds:g}s", count, seconds)
    index = root / f"index-{count}-{seconds:g}s.parquet"
    pq.write_table(
        pa.table({"audio": paths, "caption": [f"sound {i}" for i in range(count)]}), index
    )
    n = args.num_workers
    print(
        f"data: {count} FLAC files of {seconds:g} s, 44.1 kHz stereo; clips: {args.duration:g} s, "
        f"16 kHz mono; graph: {n} workers x {args.num_threads} threads, batch {args.batch_size}; "
        f"{repeats} repeat(s), order alternating; {os.cpu_count()} CPUs",
        flush=True,
    )
    graph = f"sdsnodes graph ({n} workers x {args.num_threads} threads)"
    pool = f"bare PyAV + torchaudio loop (Pool of {n})"
    loaders: dict[str, Callable[[int], int]] = {
        graph: lambda r: graph_epoch(
            functools.partial(
                build_audio_graph,
                str(index),
                sample_rate=RATE,
                channels=1,
                duration=args.duration,
                batch_size=args.batch_size,
                num_threads=args.num_threads,
                seed=r,
                errors=ErrorOptions(on_error="raise"),
                cache=CacheOptions(str(root / "cache")),
            ),
            n,
            "audio",
        ),  # fmt: skip
        pool: lambda r: pool_map(
            bare_clip, [(p, r * 7919 + i, args.duration) for i, p in enumerate(paths)], n
        ),
        "bare PyAV + torchaudio loop (1 process)": lambda r: inline(
            [(p, r * 7919 + i, args.duration) for i, p in enumerate(paths)]
        ),
    }
    rows = {
        (g, name): Result(name, unit="clips/s", group=g, baseline=name == pool)
        for g in (WALL, CORE)
        for name in loaders
    }
    for repeat in range(repeats):
        for name in in_turn(list(loaders), repeat):
            wall, cpu, items = measure(functools.partial(loaders[name], repeat))
            if items != count:
                raise RuntimeError(f"{name} delivered {items} clips, expected {count}")
            rows[WALL, name].values.append(items / wall)
            rows[CORE, name].values.append(items / cpu)
            print(
                f"  repeat {repeat + 1}/{repeats}  {name}: {wall:.2f} s, {cpu:.2f} CPU s",
                flush=True,
            )
    out = round(args.duration * RATE)
    for name in loaders:
        rows[WALL, name].note = f"{rows[WALL, name].median * out / 1e6:.2f} M samples/s out"
    results = list(rows.values())
    print()
    print(format_table(results, title=f"audio: {args.duration:g}-s clips, 44.1 -> 16 kHz mono"))
    if args.json:
        config = {"num_files": count, **vars(args), "seconds": seconds, "dir": str(root)}
        path = write_json(NAME, results, config)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
