"""The image graph's own cost per sample, the codec excluded: CPU ms per image.

The nodes of ``build_image_graph`` (index, shuffle, cache, decoder threads, collate, prefetch)
through ``torchdata.nodes.Loader`` in this process (one torch thread), with the image codec
replaced by a no-op returning one preallocated uint8 [3, 224, 224] tensor; the caption codec
stays. Rows:

- **no-op codec**: draws nothing, as a centre crop (the Decoder seeds no generator).
- **no-op codec that draws** (*the baseline*): draws one number per sample, so each sample's
  generator is seeded, as the Decoder did for every codec before seeding became lazy.

The target of issue #11 is 0.15 ms per sample. ``--num-images`` (2,048; 256 with ``--quick``)
grainy JPEGs of ``bench_image`` (only their paths are read: the no-op decodes nothing).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
)

NAME = "graph_cost"
DESCRIPTION = "build_image_graph's own CPU ms per image, codec excluded (no-op codec)"


class NoOp:
    """Returns one preallocated image; ``draws`` also draws from the sample's generator."""

    def __init__(self, draws: bool) -> None:
        import torch

        self.draws = draws
        self.image = torch.zeros((3, 224, 224), dtype=torch.uint8)

    def __call__(self, value: Any, rng: Any = None) -> Any:
        if self.draws:
            rng.random()
        return self.image


def epoch(index: str, cache: str, codec: NoOp, threads: int) -> tuple[float, int]:
    """CPU seconds and images of one epoch of the graph with ``codec`` for images."""
    import pyarrow.parquet as pq
    from torchdata.nodes import Loader

    from sdsnodes import CacheOptions, ErrorOptions, shutdown
    from sdsnodes._preset_parts import add_caption, assemble

    codecs: dict[str, Any] = {"image": codec}
    columns = {"image": "image_column"}
    add_caption(codecs, columns, "caption")
    graph = assemble(
        pq.read_table(index), codecs, columns=columns, files=["image"], batch_size=32,
        cache=CacheOptions(cache), fetch=None, errors=ErrorOptions(on_error="raise"),
        shuffle=True, seed=0, num_threads=threads, prefetch_factor=2, drop_last=False,
        rank=None, world_size=None,
    )  # fmt: skip
    start = time.process_time()
    try:
        count = sum(int(batch["image"].shape[0]) for batch in Loader(graph))
    finally:
        shutdown(graph)
    return time.process_time() - start, count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=5)
    parser.add_argument("--num-images", type=int, default=None, help="images (2048; 256 quick)")
    parser.add_argument("--num-threads", type=int, default=4, help="decoder threads (4)")
    args = parser.parse_args(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from benchmarks.bench_image import make_images

    repeats = repeats_of(args)
    count = args.num_images or (256 if args.quick else 2048)
    root = (args.dir or default_data_dir()) / "image"
    paths = make_images(root / "jpeg-256", count, 256, 256)
    index = root / f"graph-cost-{count}.parquet"
    pq.write_table(pa.table({"image": paths, "caption": [str(i) for i in range(count)]}), index)
    torch.set_num_threads(1)
    ways = {"no-op codec": NoOp(draws=False), "no-op codec that draws": NoOp(draws=True)}
    rows = {w: Result(w, unit="CPU ms/image", baseline=w.endswith("draws")) for w in ways}
    epoch(str(index), str(root / "graph-cost-cache"), ways["no-op codec"], args.num_threads)
    for repeat in range(repeats):
        for way in in_turn(list(ways), repeat):
            cpu, n = epoch(str(index), str(root / "graph-cost-cache"), ways[way], args.num_threads)
            if n != count:
                raise RuntimeError(f"{way}: {n} images, expected {count}")
            rows[way].values.append(1000 * cpu / n)
    for row in rows.values():
        row.note = f"median {row.median:.3f} ms (min {row.min:.3f}, max {row.max:.3f})"
    print(f"{count} images, batches of 32, {args.num_threads} decoder threads, "
          f"{repeats} repeat(s); target: 0.15 ms per image")  # fmt: skip
    print(
        format_table(
            list(rows.values()), title="graph cost per image, codec excluded (lower is better)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
