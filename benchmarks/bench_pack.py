"""Packed shards: ``sds pack`` against LitData's ``optimize()``, and reading each system's own
shards from S3 (moto, on 127.0.0.1) with a cold cache.

Data: ``--num-images`` (2,000; 128 with ``--quick``) grainy 256x256 JPEGs (``bench_image``'s,
kept between runs) with a caption each.

1. **Conversion** (images/s, higher is better; the seconds are printed beside): LitData's
   ``optimize(fn, paths, output_dir, chunk_bytes="64MB", num_workers=--num-workers)`` with ``fn``
   returning the file's bytes and its caption (no re-encoding) *the baseline*, against
   ``sdsnodes.pack(index, dst, shard_size="64MB")`` (the same bytes into HF-layout parquet, read
   by 32 threads), both to a fresh local folder.
2. **S3, cold cache** (samples/s over one shuffled epoch, from creating the loader to its last
   batch; decode + 224 px centre crop, batches of 32, ``--num-workers`` DataLoader workers):
   each system's own shards uploaded to a moto S3 server started here: LitData's chunks
   (``litdata.StreamingDataset(s3://…, shuffle=True)`` + its ``StreamingDataLoader``, Pillow
   decode; its obstore client allowed plain http) *the baseline*; WebDataset's tars (8, as
   ``bench_tar`` writes them; read by WebDataset over presigned HTTP URLs of the moto server,
   shard shuffle + a 1,000-sample buffer, Pillow decode); sdsnodes' packed shards (8, from ``sds pack``) through
   ``build_image_graph(s3://…)`` (ShardReader: whole shards into the cache, two-level shuffle).
   Each repeat uses a fresh cache folder. The issue's target: sdsnodes >= 1.2x both peers.
   Also per CPU second (this process and its reaped children: workers, ``curl``; not the
   server): on a shared machine, a loader with more threads (sdsnodes decodes in a thread pool
   per worker) gets a larger share of the cores, which the wall-clock rate rewards.

Repeats alternate their order; medians are reported, with min and max.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
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
    repeats_of,
    write_json,
)
from benchmarks.bench_image import make_images, measure
from benchmarks.bench_remote import import_servers, silence_worker_warnings
from benchmarks.bench_tar import _collate_list, make_tars, pil_bytes, wds_epoch

NAME = "pack"
DESCRIPTION = "sds pack vs LitData optimize(); packed shards from S3 vs LitData's and WebDataset's"
SIZE = 224


def _lit_item(item: tuple[str, str]) -> dict:
    path, caption = item
    return {"image": Path(path).read_bytes(), "caption": caption}


def lit_optimize(items: Sequence[tuple[str, str]], out: str, num_workers: int) -> None:
    from litdata import optimize

    optimize(
        _lit_item, list(items), out, chunk_bytes="64MB", num_workers=num_workers,
        verbose=False, start_method="fork",
    )  # fmt: skip


def sds_pack(index: str, out: str) -> None:
    from sdsnodes.pack import pack

    pack(index, out, shard_size="64MB", progress=False)


def _lit_decode(sample: dict):
    return pil_bytes(sample["image"]), sample["caption"]


def lit_epoch(url: str, options: dict, num_workers: int, batch_size: int, cache: str) -> int:
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming import downloader

    # LitData's obstore client refuses plain http:// endpoints (moto's): allow it, nothing else
    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"  # type: ignore[index]
    dataset = StreamingDataset(
        url, cache_dir=cache, shuffle=True, storage_options=options, transform=_lit_decode
    )
    loader = StreamingDataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_list
    )
    return sum(int(images.shape[0]) for images, _ in loader)


def sds_epoch(url: str, options: dict, num_workers: int, batch_size: int, cache: str) -> int:
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import (
        CacheOptions,
        ErrorOptions,
        FetchOptions,
        StreamingDataset,
        build_image_graph,
    )

    build = functools.partial(
        build_image_graph, url, size=SIZE, batch_size=batch_size, errors=ErrorOptions("raise"),
        cache=CacheOptions(cache), fetch=FetchOptions(options),
    )  # fmt: skip
    loader = StatefulDataLoader(StreamingDataset(build), batch_size=None, num_workers=num_workers)
    return sum(int(batch["image"].shape[0]) for batch in loader)


LIT_S3 = "LitData (its chunks, s3://)"
WDS_S3 = "WebDataset (its tars, HTTP from moto)"
PACKED_S3 = "sdsnodes packed shards (s3://)"


def upload_shards(
    server, work: Path, images: Sequence[str], captions: Sequence[str], index: str,
    num_workers: int, batch_size: int,
) -> dict[str, Callable[[str], int]]:  # fmt: skip
    """Convert the images with each system (LitData ``optimize()``, ``sds pack``, WebDataset
    tars; 8 shards each), upload them under ``bench/`` of the moto ``server`` (the bucket must
    exist), and return each system's reader of them: name → epoch(cache_dir) -> samples."""
    fs = server.fs()
    lit_dir, pack_dir = str(work / "lit"), str(work / "packed")
    lit_optimize(list(zip(images, captions)), lit_dir, num_workers)
    from sdsnodes.pack import pack

    pack(index, pack_dir, num_shards=8, progress=False)
    tars = make_tars(work / "tars", images, 8)
    fs.put(lit_dir + "/", "bench/lit/", recursive=True)
    fs.put(pack_dir + "/", "bench/packed/", recursive=True)
    for tar in tars:
        fs.put_file(str(tar), f"bench/tars/{tar.name}")
    tar_urls = [fs.url(f"bench/tars/{t.name}", expires=24 * 3600) for t in tars]  # presigned
    lit_options = {"endpoint_url": server.url}
    return {
        LIT_S3: functools.partial(
            lit_epoch, "s3://bench/lit", lit_options, num_workers, batch_size
        ),
        WDS_S3: lambda cache: wds_epoch(tar_urls, num_workers, batch_size),
        PACKED_S3: functools.partial(
            sds_epoch, "s3://bench/packed", server.storage_options, num_workers, batch_size
        ),
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=3)
    add = parser.add_argument
    add("--num-images", type=int, default=None, help="256x256 JPEGs (2000; 128 with --quick)")
    add("--num-workers", type=int, default=2, help="DataLoader / optimize() workers (2)")
    add("--batch-size", type=int, default=32, help="batch size (32)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    silence_worker_warnings()
    args = parse(argv)
    try:
        import litdata  # noqa: F401
        import webdataset  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            f"{NAME} compares with LitData and WebDataset: pip install -e '.[bench]' ({error})"
        ) from None
    import pyarrow as pa
    import pyarrow.parquet as pq

    repeats = repeats_of(args)
    count = args.num_images or (128 if args.quick else 2000)
    data = args.dir or default_data_dir()
    images = make_images(data / "image" / "jpeg-256", count, 256, 256)
    captions = [f"image {i}" for i in range(count)]
    work = Path(tempfile.mkdtemp(prefix="sds-bench-pack-"))
    index = str(work / "index.parquet")
    pq.write_table(pa.table({"image": images, "caption": captions}), index)
    servers = import_servers()
    os.environ.update(servers.s3.CLIENT_ENV)
    server = servers.s3.S3Server().start()
    try:
        rows = _run(args, repeats, count, images, captions, index, work, server)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    print(format_table([r for r in rows if r.group == "conversion"], f"{NAME}: {DESCRIPTION}"))
    print(format_table([r for r in rows if r.group == "S3 cold cache"]))
    print(format_table([r for r in rows if r.group.startswith("S3 cold cache,")]))
    if args.json:
        print(f"wrote {write_json(NAME, rows, vars(args) | {'num_images': count})}")
    return 0


def _run(args, repeats, count, images, captions, index, work, server) -> list[Result]:
    import litdata  # noqa: F401 - imported before timing, as sdsnodes is

    import sdsnodes.pack  # noqa: F401

    n, batch = args.num_workers, args.batch_size
    size_mb = sum(os.path.getsize(p) for p in images) / 1e6
    print(f"data: {count} JPEGs 256x256 ({size_mb:.0f} MB); {n} workers; {repeats} repeat(s), "
          f"order alternating; {os.cpu_count()} CPUs; S3: moto server on loopback")  # fmt: skip
    convert = {
        "LitData optimize()": lambda out: lit_optimize(list(zip(images, captions)), out, n),
        "sds pack": lambda out: sds_pack(index, out),
    }
    conv = {name: Result(name, unit="images/s", group="conversion", baseline=name.startswith("Lit"))
            for name in convert}  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in convert}
    for r in range(repeats):
        for name in in_turn(list(convert), r):
            out = str(work / f"conv-{r}-{len(seconds[name])}")
            start = time.perf_counter()
            convert[name](out)
            elapsed = time.perf_counter() - start
            seconds[name].append(elapsed)
            conv[name].values.append(count / elapsed)
            shutil.rmtree(out, ignore_errors=True)
    for name, result in conv.items():
        result.note = f"{sorted(seconds[name])[len(seconds[name]) // 2]:.2f} s (median)"
    # each system's own shards, on S3
    server.make_bucket("bench")
    loaders = upload_shards(server, work, images, captions, index, n, batch)
    read = {name: Result(name, unit="samples/s", group="S3 cold cache",
                         baseline=name.startswith("LitData")) for name in loaders}  # fmt: skip
    per_cpu = {name: Result(name, unit="samples/s", group="S3 cold cache, per CPU second",
                            baseline=name.startswith("LitData")) for name in loaders}  # fmt: skip
    for r in range(repeats):
        for name in in_turn(list(loaders), r):
            cache = tempfile.mkdtemp(prefix="sds-bench-pack-cache-", dir=work)
            wall, cpu, got = measure(functools.partial(loaders[name], cache))
            if got != count:
                read[name].note = f"delivered {got} of {count}"
            read[name].values.append(got / wall)
            per_cpu[name].values.append(got / cpu)
            shutil.rmtree(cache, ignore_errors=True)
    wds = read[WDS_S3].median
    sds = read[PACKED_S3]
    sds.note = (
        sds.note + " " if sds.note else ""
    ) + f"{sds.median / wds:.2f}x WebDataset; target >= 1.2x both"
    return list(conv.values()) + list(read.values()) + list(per_cpu.values())


if __name__ == "__main__":
    raise SystemExit(main())
