"""JPEG 256 → 224 images/s: ``build_image_graph`` through ``StatefulDataLoader`` (2 workers)
against a bare Pillow decode + resize loop over the same files, per wall second and per CPU
second (per core used); and ``ImageTensor`` with and without JPEG draft mode.

Data: ``--num-images`` (2048) JPEGs of 256x256 px (quality 90; a moving-square scene with film
grain, so they compress like photos: ~40 KB each) and ``--num-large`` (128) of 1024x768 px for
the draft table.

Table 1, loaders over the 256x256 files, output uint8 [3, 224, 224] each:

- **sdsnodes graph**: ``StatefulDataLoader(StreamingDataset(partial(build_image_graph, size=224,
  batch_size=32, num_threads=--num-threads)), batch_size=None, num_workers=2)``: one full epoch,
  worker start-up included.
- **sdsnodes graph in this process**: the same graph through ``torchdata.nodes.Loader`` in
  this process (no worker start-up, no IPC): with the ImageTensor row of table 2, it splits the
  graph's cost per image into codec, graph plumbing, and workers.
- **bare Pillow loop** (*the baseline*): ``Image.open → convert("RGB") → resize`` (bicubic, short
  side to 224) ``→ crop`` the centre ``→ torch.from_numpy``, in this process; and the same
  function in a ``multiprocessing.Pool`` of 2.

Two groups: images per wall second, and images per CPU second (CPU time of this process and of
its reaped children, the DataLoader workers or Pool processes, over the epoch): the throughput
per core used, which does not depend on how many cores the machine lends.

Table 2: ``ImageTensor(size=(224, 224))`` called in a loop in this process, ``draft=True`` (the
default: libjpeg decodes at 1/2, 1/4 or 1/8 scale when the target is at most half the source)
vs ``draft=False``, on the 1024x768 files and on the 256x256 ones (where draft never applies:
224 is more than half of 256), in images per CPU second (the loop is single-threaded; CPU time
is much less noisy than wall time on a shared machine). The loop runs with one torch thread, as a DataLoader worker does:
with torch's default thread count, the codec's final ``permute(2, 0, 1).contiguous()`` goes
through torch's intra-op thread pool and costs 2.7 ms (one idle core) to 6 ms (a loaded one) per
224x224 image instead of 0.14 ms, more than the decoding itself.
"""

from __future__ import annotations

import argparse
import functools
import io
import multiprocessing
import os
import resource
import sys
import time
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

NAME = "image"
DESCRIPTION = (
    "JPEG 256->224 images/s: build_image_graph (2 workers) vs a bare Pillow loop, per wall and "
    "per CPU second; ImageTensor with vs without draft mode"
)
SIZE = 224
WALL = "images per wall second"
CORE = "images per CPU second (per core used)"


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its reaped children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(fn: Callable[[], int]) -> tuple[float, float, int]:
    """Run ``fn()`` (returning the items it delivered): (wall s, CPU s, items)."""
    cpu, start = cpu_seconds(), time.perf_counter()
    items = fn()
    return time.perf_counter() - start, cpu_seconds() - cpu, items


def graph_epoch(build: Callable, num_workers: int, column: str) -> int:
    """One epoch of the graph ``build()`` through ``StatefulDataLoader``; the items delivered."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import StreamingDataset

    loader = StatefulDataLoader(StreamingDataset(build), batch_size=None, num_workers=num_workers)
    return sum(int(batch[column].shape[0]) for batch in loader)


def loader_epoch(build: Callable, column: str) -> int:
    """One epoch of ``build()`` through ``torchdata.nodes.Loader`` in this process (1 torch
    thread, as in a worker); the items delivered. The graph's threads are stopped after."""
    import torch
    from torchdata.nodes import Loader

    from sdsnodes import shutdown

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    graph = build()
    try:
        return sum(int(batch[column].shape[0]) for batch in Loader(graph))
    finally:
        shutdown(graph)
        torch.set_num_threads(threads)


def pool_map(fn: Callable, items: Sequence, num_workers: int) -> int:
    """``fn`` over ``items`` in a Pool of ``num_workers`` processes (1 torch thread each)."""
    with multiprocessing.Pool(num_workers, initializer=_one_thread) as pool:
        return sum(1 for _ in pool.imap(fn, items, chunksize=4))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # as in DataLoader workers


# -- data and the baseline -------------------------------------------------------------------------


def grainy_jpeg(path: Path, width: int, height: int, seed: int) -> None:
    """A JPEG (quality 90) of a square on a gradient with film grain (+-12 levels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = ((xs + ys) * 255 // (width + height)).astype(np.int16)  # [H, W]
    rgb = np.stack([base, 255 - base, (base * 3 + seed * 40 % 256) % 256], axis=-1)  # [H, W, 3]
    side, x, y = height // 3, rng.integers(width - height // 3), rng.integers(height * 2 // 3)
    rgb[y : y + side, x : x + side] = rng.integers(0, 256, 3)
    rgb += rng.integers(-12, 13, rgb.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def make_images(folder: Path, count: int, width: int, height: int) -> list[str]:
    """``count`` grainy JPEGs in ``folder`` (kept between runs); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            grainy_jpeg(path, width, height, seed=i)
        paths.append(str(path))
    return paths


def pillow_image(path: str, size: int = SIZE):
    """The bare loop's work: decode, RGB, bicubic resize of the short side to ``size``, centre
    crop; uint8 [3, size, size]."""
    import torch
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = size / min(width, height)
        cover = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(cover, Image.Resampling.BICUBIC)
        left, top = (cover[0] - size) // 2, (cover[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1)  # [3, H, W] uint8


def codec_loop(paths: Sequence[str], draft: bool) -> int:
    """``ImageTensor(size=(224, 224), draft=draft)`` over ``paths`` in this process."""
    import torch

    from sdsnodes import ImageTensor

    codec = ImageTensor(size=(SIZE, SIZE), draft=draft)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (see the module docstring)
    try:
        return sum(1 for p in paths if codec(p, rng).shape == (3, SIZE, SIZE))
    finally:
        torch.set_num_threads(threads)


# -- the benchmark ----------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser)
    add = parser.add_argument
    add("--num-images", type=int, default=None, help="256x256 JPEGs (2048; 64 with --quick)")
    add("--num-large", type=int, default=None, help="1024x768 JPEGs (128; 16 with --quick)")
    add("--num-workers", type=int, default=2, help="DataLoader workers = Pool processes (2)")
    add("--num-threads", type=int, default=4, help="the graph's decoding threads per worker (4)")
    add("--batch-size", type=int, default=32, help="the graph's batch size (32)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_warnings()
    args = parse(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdsnodes import CacheOptions, ErrorOptions, build_image_graph

    repeats = repeats_of(args)
    count = args.num_images or (64 if args.quick else 2048)
    large_count = args.num_large or (16 if args.quick else 128)
    root = (args.dir or default_data_dir()) / "image"
    paths = make_images(root / "jpeg-256", count, 256, 256)
    large = make_images(root / "jpeg-1024x768", large_count, 1024, 768)
    index = root / f"index-{count}.parquet"
    pq.write_table(
        pa.table({"image": paths, "caption": [f"image {i}" for i in range(count)]}), index
    )
    size_kb = sum(os.path.getsize(p) for p in paths) / count / 1000
    n = args.num_workers
    print(
        f"data: {count} JPEGs 256x256 (~{size_kb:.0f} KB), {large_count} JPEGs 1024x768; "
        f"output {SIZE}x{SIZE}; graph: {n} workers x {args.num_threads} threads, batch "
        f"{args.batch_size}; {repeats} repeat(s), order alternating; {os.cpu_count()} CPUs",
        flush=True,
    )
    build = functools.partial(
        build_image_graph, str(index), size=SIZE, batch_size=args.batch_size,
        num_threads=args.num_threads, errors=ErrorOptions(on_error="raise"),
        cache=CacheOptions(str(root / "cache")),
    )  # fmt: skip
    graph = f"sdsnodes graph ({n} workers x {args.num_threads} threads)"
    loop = "bare Pillow loop (1 process)"
    loaders: dict[str, Callable[[], int]] = {
        graph: lambda: graph_epoch(build, n, "image"),
        f"sdsnodes graph in this process (Loader, {args.num_threads} threads)": lambda: (
            loader_epoch(build, "image")
        ),
        loop: lambda: sum(1 for p in paths if pillow_image(p).shape == (3, SIZE, SIZE)),
        f"bare Pillow loop (Pool of {n})": lambda: pool_map(pillow_image, paths, n),
    }
    rows = {
        (g, name): Result(name, unit="images/s", group=g, baseline=name == loop)
        for g in (WALL, CORE)
        for name in loaders
    }
    cores: dict[str, list[float]] = {name: [] for name in loaders}
    for repeat in range(repeats):
        for name in in_turn(list(loaders), repeat):
            wall, cpu, items = measure(loaders[name])
            if items != count:
                raise RuntimeError(f"{name} delivered {items} images, expected {count}")
            rows[WALL, name].values.append(items / wall)
            rows[CORE, name].values.append(items / cpu)
            cores[name].append(cpu / wall)
            print(
                f"  repeat {repeat + 1}/{repeats}  {name}: {wall:.2f} s, {cpu:.2f} CPU s",
                flush=True,
            )
    for name, used in cores.items():
        rows[WALL, name].note = f"{sorted(used)[len(used) // 2]:.2f} cores used"
    draft_rows = []
    for label, files in (("1024x768", large), ("256x256", paths)):
        for draft in (True, False):
            row = Result(f"ImageTensor draft={draft}, {label} -> {SIZE}", unit="images/CPU s",
                         group=f"{label} -> {SIZE}, 1 process", baseline=not draft)  # fmt: skip
            for _ in range(repeats):
                _, cpu, items = measure(functools.partial(codec_loop, files, draft))
                row.values.append(items / cpu)
            draft_rows.append(row)
    results = list(rows.values())
    print()
    print(format_table(results, title=f"image: JPEG 256 -> {SIZE} images/s"))
    print()
    print(format_table(draft_rows, title="image: ImageTensor with vs without JPEG draft mode"))
    if args.json:
        config = {"num_images": count, "num_large": large_count, **vars(args), "dir": str(root)}
        path = write_json(NAME, results + draft_rows, config)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
