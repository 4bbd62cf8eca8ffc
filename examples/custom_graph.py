"""A video graph chained by hand, node by node, and run with torchdata's Loader.

This is what ``build_video_graph`` builds for you; chain it yourself to change any piece (another
codec, more columns, no shuffling, a different batch function):

    IndexReader → Shuffler → CachingDownloader → Decoder → Evictor → Batcher + collate → Prefetcher

Run it:

    python examples/custom_graph.py                      # makes a small demo dataset in a temp dir
    python examples/custom_graph.py --dir /tmp/sds-demo  # ... or in (and reused from) this dir
    python examples/custom_graph.py --src data/index.parquet --cache-dir /tmp/sds-cache
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from torchdata.nodes import Batcher, Loader, Mapper, Prefetcher

from sdsnodes import (
    CacheOptions,
    CachingDownloader,
    Decoder,
    Evictor,
    FetchOptions,
    IndexReader,
    Shuffler,
    Text,
    VideoClip,
    collate,
    error_stats,
    shutdown,
)
from sdsnodes._synthetic import make_video_dataset


def build_graph(src: str, args: argparse.Namespace, cache_dir: str):
    """The video graph, one node at a time; yields batch dicts."""
    # rows: {"__key__", "__index__", "__epoch__", "video": path or URL, "caption", ...}
    node = IndexReader(src)
    # the same rows, in a new permutation every epoch
    node = Shuffler(node, seed=args.seed)
    # remote URLs → pinned local files in the cache ("__url__.video" keeps the URL)
    node = CachingDownloader(
        node, ["video"], cache=CacheOptions(cache_dir), fetch=FetchOptions(max_in_flight=4)
    )
    # "video": uint8 [T, C, H, W]; "caption": str
    codecs = {
        "video": VideoClip(args.num_frames, fps=8, size=(args.size, args.size)),
        "caption": Text(),
    }
    node = Decoder(node, codecs, num_threads=2, seed=args.seed)
    # unpin the sample's cached files: the cache may now evict them
    node = Evictor(node)
    # list of samples → batch dict; torchdata's Batcher drops a last, smaller batch by default
    node = Mapper(Batcher(node, batch_size=args.batch_size, drop_last=False), collate)
    # keep 2 batches ready in a background thread
    return Prefetcher(node, prefetch_factor=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", help="your own index (parquet/CSV/JSON/JSONL/dir/wildcard/.txt)")
    parser.add_argument("--dir", type=Path, help="where the demo dataset is made (default: temp)")
    parser.add_argument("--num-videos", type=int, default=16)
    parser.add_argument("--cache-dir", help="download cache (default: <dir>/cache)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sds-example-") as tmp:
        root = args.dir or Path(tmp)
        if args.src is None:
            src = str(make_video_dataset(root, num_videos=args.num_videos, seconds=2.0))
            print(f"demo dataset: {src}")
        else:
            src = args.src
        graph = build_graph(src, args, args.cache_dir or str(root / "cache"))

        loader = Loader(graph)
        for i, batch in enumerate(loader):  # one epoch; iterate `loader` again for the next one
            if i == 0:
                print("first batch:")
                for key, value in batch.items():
                    if hasattr(value, "shape"):
                        print(f"  {key:<16} {str(value.dtype):<14} {list(value.shape)}")
                    else:
                        kind = type(value).__name__
                        print(f"  {key:<16} {kind:<14} len {len(value)}: {value[0]!r}")
            print(f"batch {i}: video {list(batch['video'].shape)} keys {batch['__key__']}")
        skipped = {k: v for k, v in error_stats(loader.state_dict()).items() if k != "seen"}
        print(f"skipped samples: {skipped or 'none'}")
        shutdown(graph)  # stop the graph's threads before the process exits


if __name__ == "__main__":
    main()
