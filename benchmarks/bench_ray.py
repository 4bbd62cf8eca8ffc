"""Ray Data vs our graph: JPEG 256 -> 224 images/s decoded by 2 Ray workers vs 2 DataLoader workers.

Data: ``--num-images`` (512) JPEGs of 256x256 px (the grainy photos-like files of
``bench_image``, ~40 KB each), decoded by the same codec in every row:
``ImageTensor(size=(224, 224))`` (what ``build_image_graph(size=224)`` uses), output uint8
[3, 224, 224] per image, delivered in batches of ``--batch-size`` (32) to this process.

Rows (images per wall second, one epoch each, this process counting the batches):

- **sdsnodes graph, 2 DataLoader workers**:
  ``StatefulDataLoader(StreamingDataset(partial(build_image_graph, size=224, batch_size=32)),
  batch_size=None, num_workers=2)``, worker start-up included (as ``bench_image`` measures it).
- **sdsnodes graph, 2 persistent workers, 2nd epoch** (*the baseline*): the same loader with
  ``persistent_workers=True``, timing its second epoch only: no worker start-up, as Ray's
  workers, which stay warm between repeats: the like-for-like comparison with the Ray rows.
- **Ray map_batches, 2 Ray workers**: ``sdsnodes.ray.read_index(index).map_batches(
  decode_batches({"image": ImageTensor(size=(224, 224))}), batch_format="numpy",
  batch_size=32)`` then ``select_columns(["image"]).iter_torch_batches(batch_size=32)`` on a
  local Ray instance with ``num_cpus=2`` (started once, before the repeats: its start-up time is
  printed apart, not counted; Ray's workers stay warm between repeats, and each epoch pays Ray
  Data's own start of execution).
- **Ray map_batches -> RaySource -> Batcher**: the same Ray pipeline consumed through our graph
  (``Loader(Mapper(Batcher(RaySource(ds), 32), collate))``), the "other way".

The machine is shared: run it when it is quiet, and read the ratio (measured in the same run,
rows alternating order) rather than the absolute figures.

    python -m benchmarks.run ray
    python -m benchmarks.run ray --quick
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
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
    silence_known_warnings,
    timed,
    write_json,
)

NAME = "ray"
DESCRIPTION = "JPEG 256->224 images/s: Ray map_batches with our codec (2 Ray workers) vs our graph (2 DataLoader workers)"
ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
UNIT = "images/s"


def make_index(folder: Path, count: int) -> str:
    """``count`` 256x256 JPEGs (kept between runs) and an ``index.parquet`` of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.bench_image import make_images

    paths = make_images(folder / "jpeg256", count, 256, 256)
    index = folder / f"ray-index-{count}.parquet"
    pq.write_table(pa.table({"image": paths}), index)
    return str(index)


def graph_loader(index: str, batch_size: int, persistent: bool):
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import StreamingDataset, build_image_graph

    build = functools.partial(
        build_image_graph, index, size=SIZE, batch_size=batch_size, caption_column=None
    )
    return StatefulDataLoader(StreamingDataset(build), batch_size=None, num_workers=2,
                              persistent_workers=persistent)  # fmt: skip


def count(loader) -> int:
    return sum(int(batch["image"].shape[0]) for batch in loader)


def graph_epoch(index: str, batch_size: int) -> tuple[float, int]:
    return timed(lambda: count(graph_loader(index, batch_size, persistent=False)))


def graph_warm_epoch(index: str, batch_size: int) -> tuple[float, int]:
    """The second epoch of a loader with persistent workers: no start-up, as Ray's warm workers."""
    loader = graph_loader(index, batch_size, persistent=True)
    count(loader)
    return timed(lambda: count(loader))


def ray_dataset(index: str, batch_size: int):
    import sdsnodes.ray as sds_ray
    from sdsnodes import ImageTensor

    decode = sds_ray.decode_batches({"image": ImageTensor(size=(SIZE, SIZE))})
    ds = sds_ray.read_index(index).map_batches(decode, batch_format="numpy", batch_size=batch_size)
    return ds.select_columns(["image"])


def ray_epoch(index: str, batch_size: int) -> tuple[float, int]:
    ds = ray_dataset(index, batch_size)
    return timed(lambda: count(ds.iter_torch_batches(batch_size=batch_size)))


def ray_source_epoch(index: str, batch_size: int) -> tuple[float, int]:
    import sdsnodes.ray as sds_ray
    from sdsnodes import Batcher, Loader, Mapper, collate

    source = sds_ray.RaySource(ray_dataset(index, batch_size))
    return timed(lambda: count(Loader(Mapper(Batcher(source, batch_size), collate))))


def start_ray() -> float:
    """Start a local Ray (2 CPUs, 127.0.0.1, no dashboard); seconds it took."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)  # for workers
    start = time.perf_counter()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"benchmarks.bench_{NAME}", description=DESCRIPTION)
    add_common_args(parser, repeats=3)
    parser.add_argument("--num-images", type=int, default=None, help="JPEGs (512; 64 with --quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    silence_known_warnings()
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\..*")
    count = args.num_images or (64 if args.quick else 512)
    index = make_index(args.dir or default_data_dir(), count)
    ray_start = start_ray()
    import ray

    runs = {
        "sdsnodes graph, 2 persistent workers, 2nd epoch": graph_warm_epoch,
        "sdsnodes graph, 2 DataLoader workers": graph_epoch,
        "Ray map_batches, 2 Ray workers": ray_epoch,
        "Ray map_batches -> RaySource -> Batcher": ray_source_epoch,
    }
    rows = {name: Result(name, unit=UNIT, baseline=(i == 0)) for i, name in enumerate(runs)}
    try:
        ray_epoch(index, args.batch_size)  # warm Ray's workers (imports), as a run would be
        for repeat in range(repeats_of(args)):
            for name in in_turn(list(runs), repeat):
                seconds, images = runs[name](index, args.batch_size)
                if images != count:
                    raise SystemExit(f"{name} delivered {images} images, not {count}")
                rows[name].values.append(images / seconds)
    finally:
        ray.shutdown()
    title = (
        f"{count} JPEGs 256x256 -> uint8 [3, {SIZE}, {SIZE}], batches of {args.batch_size}, "
        f"{os.cpu_count()} CPUs; Ray start-up {ray_start:.1f} s (not counted)"
    )
    print(format_table(list(rows.values()), title))
    if args.json:
        write_json(NAME, list(rows.values()), {"num_images": count, "batch_size": args.batch_size,
                                               "ray_start_s": ray_start})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
