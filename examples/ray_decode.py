"""Ray Data, both ways: Ray workers decode with sdsnodes' codecs, and a graph consumes Ray.

1. ``sdsnodes.ray.read_index`` reads the index (as ``IndexReader`` does) into a Ray Dataset;
   ``decode_batches`` decodes its images in Ray's workers; ``iter_torch_batches`` feeds torch.
2. ``RaySource`` puts one split of ``ds.streaming_split(n, equal=True)`` (here: n=1, the one
   "rank" of this script) at the head of our graph: Batcher, collate, Prefetcher, Loader.

    python examples/ray_decode.py --num-images 16 --batch-size 4

Runs on CPU in a few seconds after Ray has started (a local Ray instance on 127.0.0.1 with
``--num-cpus`` workers, unless one is already running); the images are made once under
``--dir``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from sdsnodes import Batcher, ImageTensor, IndexOptions, Loader, Mapper, Prefetcher, collate
from sdsnodes._synthetic import make_image_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sds-ray-demo")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
    import ray

    import sdsnodes.ray as sds_ray

    if not ray.is_initialized():
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    index = make_image_dataset(args.dir, num_images=args.num_images)

    # 1. Ray decodes: the index's rows, filtered as IndexReader filters them
    ds = sds_ray.read_index(index, index=IndexOptions(filter="caption is not None"))
    decode = sds_ray.decode_batches({"image": ImageTensor(size=(args.size, args.size))})
    ds = ds.map_batches(decode, batch_format="numpy", batch_size=args.batch_size)
    images = 0
    for batch in ds.select_columns(["image", "__index__"]).iter_torch_batches(
        batch_size=args.batch_size
    ):
        images += len(batch["image"])
        print(f"ray batch: image {batch['image'].dtype} {list(batch['image'].shape)} "
              f"rows {batch['__index__'].tolist()}")  # fmt: skip
    print(f"ray decoded {images} images")

    # 2. Our graph over Ray: one split per training rank (one rank here)
    (split,) = ds.streaming_split(1, equal=True)
    graph = Prefetcher(Mapper(Batcher(sds_ray.RaySource(split), args.batch_size), collate), 2)
    loader = Loader(graph)
    for epoch in range(2):
        keys = [key for batch in loader for key in batch["__key__"]]
        print(f"graph epoch {epoch}: {len(keys)} samples, first keys {keys[:4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
