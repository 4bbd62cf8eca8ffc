"""Aspect-ratio bucketing for diffusion training: every batch holds images of one resolution.

Images of several aspect ratios go to the nearest of a few bucket resolutions (by the index's
``width``/``height`` columns), are batched per bucket and decoded straight to their bucket's
size, so no image is squashed to a square and every batch stacks:

    IndexReader → Shuffler → BucketBatcher(AspectRatioBuckets(resolutions))   rows, grouped
                → ParallelMapper(decode_batch)                                 [B, 3, h, w]

The BucketBatcher sits at the index level, before decoding: its buffered samples are small rows,
so resuming (which reads the samples still buffered again) costs no decoding. The example
resumes from a state taken after ``--resume-after`` batches and checks that the rest of the
epoch matches, then shows that with ``num_batches="even"`` every rank gets as many batches.

Run it (it writes a small synthetic dataset to a temp dir, or once to ``--dir``):

    python examples/bucketing.py
    python examples/bucketing.py --dir /tmp/sds-buckets --batch-size 4 --world-size 3
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torchdata.nodes import Loader, ParallelMapper

from sdsnodes import ImageTensor, IndexReader, Shuffler, collate, shutdown
from sdsnodes._synthetic import caption, write_image
from sdsnodes.nodes import AspectRatioBuckets, BucketBatcher

SIZES = [(64, 64), (96, 64), (64, 96), (112, 48)]  # (width, height) of the synthetic images
RESOLUTIONS = [(32, 32), (32, 48), (48, 32), (24, 56)]  # the buckets, (height, width)


def make_dataset(root: Path, num_images: int) -> Path:
    """Images of four aspect ratios and an index with their ``width`` and ``height``."""
    index = root / "index.parquet"
    if index.exists() and pq.read_metadata(index).num_rows == num_images:
        return index
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {"image": [], "caption": [], "width": [], "height": []}
    for i in range(num_images):
        width, height = SIZES[i * 7 % len(SIZES)]
        path = root / "images" / f"{i:05d}.png"
        write_image(path, width=width, height=height, seed=i)
        for column, value in zip(rows, (str(path), caption(i, moving=False), width, height)):
            rows[column].append(value)
    pq.write_table(pa.table(rows), index)
    return index


def decode_batch(batch: list[dict]) -> dict:
    """Decode a bucket's images at the bucket's resolution and collate them."""
    height, width = batch[0]["__bucket__"]
    codec = ImageTensor(size=(height, width))  # resize to cover, then centre crop
    samples = [
        {**s, "image": codec(s["image"], np.random.default_rng([s["__epoch__"], s["__index__"]]))}
        for s in batch
    ]
    return collate(samples)  # "image": uint8 [B, 3, height, width]


def build_graph(src: Path, args: argparse.Namespace, rank: int = 0, world_size: int = 1,
                num_batches: str | None = None):  # fmt: skip
    node = IndexReader(src, rank=rank, world_size=world_size)
    node = Shuffler(node, seed=args.seed)
    node = BucketBatcher(node, args.batch_size, AspectRatioBuckets(RESOLUTIONS),
                         num_batches=num_batches)  # fmt: skip
    return ParallelMapper(node, decode_batch, num_workers=2, method="thread")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="where the demo dataset is made (default: temp)")
    parser.add_argument("--num-images", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resume-after", type=int, default=3)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sds-example-") as tmp:
        src = make_dataset(args.dir or Path(tmp), args.num_images)
        graph = build_graph(src, args)
        loader = Loader(graph)
        keys, per_bucket, state = [], collections.Counter(), None
        for i, batch in enumerate(loader):
            bucket = tuple(batch["__bucket__"][0])
            per_bucket[bucket] += 1
            keys.append(batch["__key__"])
            print(f"batch {i}: bucket {bucket} image {list(batch['image'].shape)}")
            if i + 1 == args.resume_after:
                state = json.loads(json.dumps(loader.state_dict()))  # as saved in a checkpoint
        shutdown(graph)
        total = sum(len(k) for k in keys)
        print(f"{len(keys)} batches, {total} images, each once: {len(set(sum(keys, []))) == total}")
        print("batches per bucket:", {str(b): n for b, n in sorted(per_bucket.items())})

        fresh_graph = build_graph(src, args)
        fresh = Loader(fresh_graph)
        fresh.load_state_dict(state)
        rest = [batch["__key__"] for batch in fresh]
        shutdown(fresh_graph)
        print(f"resumed after {args.resume_after} batches: the next {len(rest)} match: "
              f"{rest == keys[args.resume_after:]}")  # fmt: skip

        for rank in range(args.world_size):  # what each rank of a job would read
            graph = build_graph(src, args, rank, args.world_size, num_batches="even")
            batches = list(Loader(graph))
            bucketer = graph.source
            print(f"rank {rank}/{args.world_size}: {len(batches)} batches, "
                  f"{sum(len(b['__key__']) for b in batches)} images, {bucketer.dropped} left "
                  "for later epochs")  # fmt: skip
            shutdown(graph)


if __name__ == "__main__":
    main()
