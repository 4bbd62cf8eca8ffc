"""Tar shards in place: samples/s of ``build_image_graph`` over an index of tar members
(``sdsnodes.index.tar``, each member's bytes read alone) vs WebDataset streaming the same tars,
local and over the loopback HTTP server; and what indexing the tars costs.

Data: ``--num-images`` (2048; 128 with ``--quick``) grainy JPEGs of 256x256 px (~40 KB, the
``image`` benchmark's), each with a ``.txt`` caption and a ``.json`` of its size, in
``--num-shards`` (8) tars written by ``tarfile``.

Table 1, images per wall second and per CPU second (this process and its reaped children: the
workers, WebDataset's ``curl``), one epoch, 2 DataLoader workers, output uint8 [B, 3, 224, 224], batch 32, medians of
``--repeats`` (3) in alternating order:

- **sdsnodes, tar members**: ``StatefulDataLoader(StreamingDataset(build_image_graph(index,
  size=224)), num_workers=2)`` over the parquet index ``tar_index`` wrote; local tars are read
  with one ``pread`` per member, remote ones with one ranged GET per member into a fresh
  (cold) cache directory per epoch, 16 in flight per worker; global shuffle.
- **WebDataset** (*the baseline*): ``wds.WebDataset(urls, shardshuffle=True).shuffle(1000)
  .map(decode).batched(32)`` in a ``wds.WebLoader(num_workers=2)``: each worker streams whole
  tars (over HTTP with ``curl``, WebDataset's ``gopen``) and decodes with the same Pillow
  resize + centre crop as the image benchmark's baseline.

Table 2: ``tar_index`` over the HTTP tars, per ``mode`` (``auto``, ``headers``, ``whole``): seconds
to index, and the bytes and GETs it moved, on the image tars and on tars of 4 MiB members
(video-sized).

Needs ``pip install webdataset`` for table 1's baseline (the benchmark says so and skips those
rows without it).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    silence_known_warnings,
    write_json,
)
from benchmarks.bench_image import make_images, measure
from benchmarks.bench_remote import import_servers

NAME = "tar"
DESCRIPTION = (
    "tar shards in place: build_image_graph over tar members vs WebDataset on the same tars, "
    "local and HTTP, 2 workers; cost of indexing the tars"
)
SIZE = 224


def make_tars(folder: Path, images: Sequence[str], shards: int) -> list[Path]:
    """``images`` with a caption and a json each, in ``shards`` tars (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(images) // shards)
    paths = []
    for s in range(shards):
        path = folder / f"shard-{s:04d}.tar"
        paths.append(path)
        if path.exists():
            continue
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w") as tar:
            for i in range(s * per, min(len(images), (s + 1) * per)):
                key = f"{i:07d}"
                for ext, data in (
                    ("jpg", Path(images[i]).read_bytes()),
                    ("txt", f"image {i}".encode()),
                    ("json", json.dumps({"width": 256, "height": 256, "index": i}).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
    return paths


def pil_bytes(data: bytes):
    """The baseline's decode of JPEG bytes: RGB, bicubic short side to 224, centre crop."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = SIZE / min(width, height)
        cover = (max(SIZE, round(width * scale)), max(SIZE, round(height * scale)))
        image = image.resize(cover, Image.Resampling.BICUBIC)
        left, top = (cover[0] - SIZE) // 2, (cover[1] - SIZE) // 2
        image = image.crop((left, top, left + SIZE, top + SIZE))
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1)  # [3, H, W] uint8


def _wds_sample(sample: dict):
    return pil_bytes(sample["jpg"]), sample["txt"].decode()


def wds_epoch(urls: Sequence[str], num_workers: int, batch_size: int) -> int:
    """One epoch of WebDataset over ``urls``; the images delivered."""
    import webdataset as wds

    dataset = (
        wds.WebDataset(list(urls), shardshuffle=True, empty_check=False)
        .shuffle(1000)
        .map(_wds_sample)
        .batched(batch_size, collation_fn=_collate_list)
    )
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=num_workers)
    return sum(int(images.shape[0]) for images, _ in loader)


def _collate_list(samples):
    import torch

    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


def graph_epoch(index: str, num_workers: int, batch_size: int, cache_dir: str) -> int:
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import CacheOptions, ErrorOptions, StreamingDataset, build_image_graph

    build = functools.partial(
        build_image_graph, index, size=SIZE, batch_size=batch_size,
        errors=ErrorOptions("raise"), cache=CacheOptions(cache_dir),
    )  # fmt: skip
    loader = StatefulDataLoader(StreamingDataset(build), batch_size=None, num_workers=num_workers)
    return sum(int(batch["image"].shape[0]) for batch in loader)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=3)
    add = parser.add_argument
    add("--num-images", type=int, default=None, help="256x256 JPEGs (2048; 128 with --quick)")
    add("--num-shards", type=int, default=8, help="tars (8)")
    add("--num-workers", type=int, default=2, help="DataLoader workers (2)")
    add("--batch-size", type=int, default=32, help="batch size (32)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_warnings()
    args = parse(argv)
    import pyarrow.parquet as pq

    from sdsnodes.index.tar import tar_index

    repeats = args.repeats or (1 if args.quick else 3)
    count = args.num_images or (128 if args.quick else 2048)
    root = (args.dir or default_data_dir()) / "tar"
    images = make_images((args.dir or default_data_dir()) / "image" / "jpeg-256", count, 256, 256)
    tars = make_tars(root / f"tars-{count}-{args.num_shards}", images, args.num_shards)
    try:
        import webdataset  # noqa: F401

        have_wds = True
    except ImportError:
        have_wds = False
        print("webdataset is not installed (pip install webdataset): its rows are left out")
    servers = import_servers()
    server = servers.http.HTTPServer().start()
    work = Path(tempfile.mkdtemp(prefix="sds-bench-tar-"))
    try:
        served = server.root / "tars"
        served.mkdir(exist_ok=True)
        for path in tars:
            shutil.copy(path, served / path.name)
        urls = [f"{server.url}/tars/{p.name}" for p in tars]
        local_index, http_index = work / "local.parquet", work / "http.parquet"
        pq.write_table(tar_index(str(tars[0].parent / "*.tar")), local_index)
        pq.write_table(tar_index(f"{server.url}/tars/*.tar"), http_index)
        size_mb = sum(p.stat().st_size for p in tars) / 1e6
        n = args.num_workers
        print(f"data: {count} JPEGs 256x256 + .txt + .json in {len(tars)} tars ({size_mb:.0f} MB);"
              f" output {SIZE}x{SIZE}, batch {args.batch_size}; {n} workers; {repeats} repeat(s),"
              f" order alternating; {os.cpu_count()} CPUs; HTTP: aiohttp server on loopback")  # fmt: skip
        loaders: dict[tuple[str, str], Callable[[], int]] = {}
        for where, index, shard_urls in (("local", local_index, [str(p) for p in tars]),
                                         ("HTTP", http_index, urls)):  # fmt: skip
            if have_wds:
                loaders[where, "WebDataset (streams whole tars)"] = functools.partial(
                    wds_epoch, shard_urls, n, args.batch_size
                )
            loaders[where, "sdsnodes over tar members"] = lambda index=index: graph_epoch(
                str(index), n, args.batch_size, tempfile.mkdtemp(dir=work)
            )
        rows = {
            (g, key): Result(
                key[1],
                unit="images/s",
                group=f"{key[0]}, {n} workers, {g}",
                baseline=key[1].startswith("WebDataset"),
            )
            for g in ("per wall second", "per CPU second")
            for key in loaders
        }
        cores: dict[tuple[str, str], list[float]] = {key: [] for key in loaders}
        for repeat in range(repeats):
            for key in in_turn(list(loaders), repeat):
                wall, cpu, items = measure(loaders[key])
                if items != count:
                    raise RuntimeError(f"{key} delivered {items} images, expected {count}")
                rows["per wall second", key].values.append(items / wall)
                rows["per CPU second", key].values.append(items / cpu)
                cores[key].append(cpu / wall)
                print(
                    f"  repeat {repeat + 1}/{repeats}  {key[0]} {key[1]}: {wall:.2f} s, "
                    f"{cpu:.2f} CPU s",
                    flush=True,
                )
        for key, used in cores.items():
            rows["per wall second", key].note = f"{sorted(used)[len(used) // 2]:.2f} cores used"
        # table 2: indexing, on the image tars and on tars of 4 MiB members
        big = served / "big"
        big.mkdir(exist_ok=True)
        for s in range(2):
            with tarfile.open(big / f"big-{s}.tar", "w") as tar:
                for i in range(16):
                    for ext, data in (("mp4", os.urandom(4 << 20)), ("txt", b"a clip")):
                        info = tarfile.TarInfo(f"{s}{i:04d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        index_rows = []
        for label, pattern in (("image tars", f"{server.url}/tars/*.tar"),
                               ("4 MiB-member tars", f"{server.url}/tars/big/*.tar")):  # fmt: skip
            for mode in ("auto", "headers", "whole"):
                row = Result(f"{label}, mode={mode}", unit="tars/s", group=label,
                             baseline=mode == "whole")  # fmt: skip
                for _ in range(repeats):
                    counts: dict[str, int] = {}
                    start = time.perf_counter()
                    tar_index(pattern, mode=mode, num_threads=1, stats=counts)
                    row.values.append(counts["tars"] / (time.perf_counter() - start))
                row.note = f"{counts['bytes_read'] / 1e6:.1f} MB in {counts['requests']} GETs"
                index_rows.append(row)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results = list(rows.values())
    print()
    print(format_table(results, title=f"tar: JPEG 256 -> {SIZE} images/s over the same tars"))
    print()
    print(format_table(index_rows, title="tar: indexing the tars over HTTP (1 thread)"))
    if args.json:
        path = write_json(NAME, results + index_rows, {"num_images": count, **vars(args),
                                                       "dir": str(root)})  # fmt: skip
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
