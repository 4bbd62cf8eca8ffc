"""The cost of StreamBatcher per batch against torchdata's plain Batcher over the same chunks.

Both read the same streams through the same ``IndexReader → StreamOpener`` (the same chunker,
the same files, in index order, in this process, one epoch each through
``torchdata.nodes.Loader``, no prefetching):

- **StreamBatcher** (the subject): ``StreamBatcher(opener, B, pad="pad", num_threads=0)``: B
  streams side by side, row r continuing its stream, the source's state recorded before every
  stream, the ``is_first``/``is_pad``/``__row__`` columns, padding at the end of the epoch; the
  rows' chunks read one after the other, as the Batcher reads them.
- **StreamBatcher, 4 threads**: the same with ``num_threads=4`` (the preset's default): the
  rows' next chunks read side by side.
- **Batcher** (*the baseline*): the streams' chunks one stream after the other
  (``IterableWrapper`` over ``stream.chunks()``), then ``torchdata.nodes.Batcher(B)`` +
  ``collate``: the same chunks batched with no coherence.

Two kinds of chunks: ``latent`` (``LatentChunks`` over float32 ``.npy`` files of
[4, T, 16, 16], 4 latent frames per chunk: a cheap chunk, so the batcher's own cost shows) and
``video`` (``VideoChunks`` over H.264 mp4 files, 8 frames at 8 frames/s, 64x64, one keyframe
per file (GOP 48 frames, as x264's default of 250 frames keeps several seconds apart): decoding
dominates). A third table, ``video decoding``, reads the same clips without batching, by
``VideoChunks`` (one pass over each file: each frame decoded once) against the baseline of a
``VideoClip(start="given")`` per clip (each seeking to the keyframe before it and decoding from
there). One torch thread, as in a DataLoader worker. Printed: chunks (not padding) per
second, median, min and max over ``--repeats`` repeats that alternate which runs first, the
ratio to the Batcher, and the time per batch the StreamBatcher (inline) adds: (its median epoch
time - the Batcher's) / its batches, in ms. The
StreamBatcher yields more batches for the same chunks: at the end of the epoch, rows whose
streams ran out are padding while the longest streams finish.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
    write_json,
)

NAME = "streams"
DESCRIPTION = (
    "StreamBatcher (coherent rows, resumable) vs torchdata's Batcher over the same chunks: "
    "chunks/s and the time per batch it adds"
)
LOADERS = ("StreamBatcher", "StreamBatcher, 4 threads", "Batcher")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=5)
    parser.add_argument("--num-streams", type=int, default=None, help="files (64; 16 quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows B (8)")
    args = parser.parse_args(argv)
    args.num_streams = args.num_streams or (16 if args.quick else 64)
    if args.num_streams < 1 or args.batch_size < 1:
        parser.error("--num-streams and --batch-size must be >= 1")
    return args


def write_data(root: Path, n: int) -> dict[str, Path]:
    """``n`` latents and ``n`` videos of 3 to 6 chunks each (cached); their index files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdsnodes._synthetic import write_video

    root.mkdir(parents=True, exist_ok=True)
    indexes = {"latent": root / "latent.parquet", "video": root / "video.parquet"}
    if all(p.exists() for p in indexes.values()):
        return indexes
    rng = np.random.default_rng(0)
    latents, videos = [], []
    for i in range(n):
        chunks = 3 + i % 4
        latent = root / f"l{i:05d}.npy"
        np.save(latent, rng.standard_normal((4, 4 * chunks, 16, 16)).astype(np.float32))
        video = root / f"v{i:05d}.mp4"
        write_video(video, num_frames=8 * chunks, fps=8, width=64, height=64, seed=i, gop=48)
        latents.append(str(latent))
        videos.append(str(video))
    pq.write_table(pa.table({"latent": latents}), indexes["latent"])
    pq.write_table(pa.table({"video": videos}), indexes["video"])
    return indexes


def make(kind: str, index: Path, loader: str, batch_size: int):
    """The graph of ``loader`` over the ``kind`` chunks of ``index``."""
    from torchdata.nodes import Batcher, IterableWrapper, Loader, Mapper

    from sdsnodes import (
        IndexReader,
        LatentChunks,
        StreamBatcher,
        StreamOpener,
        VideoChunks,
        collate,
    )

    chunker = LatentChunks(4) if kind == "latent" else VideoChunks(8, 8.0, size=(64, 64))
    opener = StreamOpener(IndexReader(str(index)), kind, chunker)
    if loader.startswith("StreamBatcher"):
        threads = 4 if loader.endswith("threads") else 0
        return StreamBatcher(opener, batch_size, pad="pad", num_threads=threads)
    chunks = itertools.chain.from_iterable(s.chunks() for s in Loader(opener))
    return Mapper(Batcher(IterableWrapper(chunks), batch_size), collate)


DECODERS = ("VideoChunks (one pass)", "VideoClip per clip")


def decode_all(index: Path, way: str) -> tuple[int, float]:
    """Every clip of every video of ``index``, one stream after the other: by ``VideoChunks``
    (one pass per file) or a ``VideoClip(start="given")`` per clip (a seek to the keyframe before
    each); the clips and the seconds."""
    import pyarrow.parquet as pq

    from sdsnodes import VideoChunks, VideoClip

    chunker = VideoChunks(8, 8.0, size=(64, 64))
    codec = VideoClip(8, fps=8.0, size=(64, 64), start="given", on_short="skip")
    clips = 0
    start = time.perf_counter()
    for path in pq.read_table(index).column("video").to_pylist():
        if way == DECODERS[0]:
            clips += sum(1 for _ in chunker.chunks(path))
            continue
        for c in range(chunker.count(path)):
            codec(path, None, {"clip_start": c * 8 / 8.0})
            clips += 1
    return clips, time.perf_counter() - start


def epoch(kind: str, index: Path, loader: str, batch_size: int) -> tuple[int, int, float]:
    """Batches and chunks (not padding) of one epoch, and its seconds."""
    from torchdata.nodes import Loader

    batches = chunks = 0
    start = time.perf_counter()
    for batch in Loader(make(kind, index, loader, batch_size)):
        batches += 1
        padded = batch.get("is_pad")
        chunks += len(batch["__chunk__"]) - (0 if padded is None else int(padded.sum()))
    return batches, chunks, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = parse(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker; copies then do not wait on idle cores
    repeats = repeats_of(args)
    root = (args.dir or default_data_dir()) / f"streams-{args.num_streams}-gop48"
    indexes = write_data(root, args.num_streams)
    print(
        f"{args.num_streams} streams of 3-6 chunks, batch {args.batch_size}, {repeats} repeat(s); "
        "latent: [4, 4, 16, 16] float32 chunks from .npy; video: 8 frames 64x64 from H.264",
        flush=True,
    )
    rows: list[Result] = []
    for kind, index in indexes.items():
        results = {
            name: Result(name, unit="chunks/s", group=f"{kind} chunks", baseline=name == "Batcher")
            for name in LOADERS
        }
        counts: dict[str, tuple[int, int]] = {}
        for repeat in range(repeats):
            for name in in_turn(LOADERS, repeat):
                batches, chunks, seconds = epoch(kind, index, name, args.batch_size)
                counts[name] = batches, chunks
                results[name].values.append(chunks / seconds)
        if len({chunks for _, chunks in counts.values()}) != 1:
            raise SystemExit(f"{kind}: the loaders delivered different chunks: {counts}")
        chunks = counts["Batcher"][1]
        seconds = {name: chunks / results[name].median for name in LOADERS}
        added = 1e3 * (seconds["StreamBatcher"] - seconds["Batcher"]) / counts["StreamBatcher"][0]
        batches = counts["StreamBatcher"][0]
        results["StreamBatcher"].note = f"{added:+.2f} ms per batch ({batches} batches, padding in)"
        results["Batcher"].note = f"{counts['Batcher'][0]} batches of {chunks} chunks"
        rows += results.values()
    decoding = {
        way: Result(way, unit="chunks/s", group="video decoding", baseline=way == DECODERS[1])
        for way in DECODERS
    }
    for repeat in range(repeats):
        for way in in_turn(DECODERS, repeat):
            clips, seconds = decode_all(indexes["video"], way)
            decoding[way].values.append(clips / seconds)
    rows += decoding.values()
    print()
    print(format_table(rows, f"{NAME}: {DESCRIPTION}"))
    if args.json:
        print(f"wrote {write_json(NAME, rows, {**vars(args), 'root': str(root)})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
