"""The ``sds`` command: ``sds demo`` streams a real video dataset end to end.

Exit codes: 0 success, 1 the command failed (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

DEFAULT_DEMO_DIR = Path(os.environ.get("SDS_CACHE_DIR") or Path.home() / ".cache" / "sdsnodes") / "demo"


def _demo(args: argparse.Namespace) -> int:
    from torchdata.stateful_dataloader import StatefulDataLoader
    from tqdm import tqdm

    from sdsnodes import StreamingDataset, build_video_graph, error_stats
    from sdsnodes._synthetic import make_video_dataset

    if args.src is None:
        print(f"demo dataset: {args.dir} ({args.num_videos} H.264 clips, made once)")
        src = str(make_video_dataset(args.dir, num_videos=args.num_videos, progress=True))
    else:
        src = args.src
    factory = functools.partial(
        build_video_graph, src, num_frames=args.num_frames, fps=args.fps, size=args.size,
        batch_size=args.batch_size, cache_dir=args.cache_dir, video_column=args.video_column,
        caption_column=args.caption_column or None,
    )  # fmt: skip
    graph = factory()  # validates the index and arguments here, before workers start
    num_rows = len(graph_index(graph))
    ds = StreamingDataset(factory)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
        dl = StatefulDataLoader(ds, batch_size=None, num_workers=args.num_workers)
    clips = frames = 0
    shapes: dict[str, tuple] = {}
    start = time.perf_counter()
    total = math.ceil(num_rows / args.batch_size)
    with tqdm(total=num_rows, unit="clip", desc="streaming") as bar:
        for batch in dl:
            video = batch["video"]  # [B, T, C, H, W] uint8
            clips += video.shape[0]
            frames += video.shape[0] * video.shape[1]
            shapes = {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
            bar.update(video.shape[0])
    elapsed = time.perf_counter() - start
    skipped = {k: v for k, v in error_stats(dl.state_dict()).items() if k != "seen"}
    print(f"streamed {clips} clips ({frames} frames) of {num_rows} rows in {elapsed:.2f} s "
          f"with {args.num_workers} workers (~{total} batches)")  # fmt: skip
    print(f"throughput: {clips / elapsed:.1f} clips/s, {frames / elapsed:.1f} frames/s")
    print("batch shapes: " + ", ".join(f"{k} {list(s)}" for k, s in shapes.items()))
    if batch is not None:
        print(f"first caption of the last batch: {batch['caption'][0]!r}" if "caption" in batch else "")
    print(f"skipped samples: {skipped or 'none'}")
    return 0


def graph_index(graph):  # noqa: ANN001, ANN201 - small helper for the demo
    from sdsnodes.nodes import IndexReader, iter_nodes

    for node in iter_nodes(graph):
        if isinstance(node, IndexReader):
            return node.index
    raise ValueError("the graph has no IndexReader")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sds", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="make a small real video dataset (once) and stream one epoch of it")
    demo.add_argument("--src", help="stream your own index instead (parquet/CSV/JSON/dir/wildcard/.txt)")
    demo.add_argument("--dir", type=Path, default=DEFAULT_DEMO_DIR, help="where the demo dataset is made")
    demo.add_argument("--num-videos", type=int, default=64)
    demo.add_argument("--num-workers", type=int, default=2)
    demo.add_argument("--batch-size", type=int, default=4)
    demo.add_argument("--num-frames", type=int, default=16)
    demo.add_argument("--fps", type=float, default=8.0)
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--video-column", default="video")
    demo.add_argument("--caption-column", default="caption", help="'' for none")
    demo.add_argument("--cache-dir", default=None, help="download cache for remote sources")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ValueError, OSError) as error:
        print(f"sds {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
