"""sdsnodes against its peers on one task: local JPEGs → 224x224 crops, one shuffled epoch.

Loaders (all with ``--num-workers`` (2) worker processes, batches of 32, the same Pillow decode
(:func:`benchmarks._peers.crop224`) except sdsnodes, which runs its own ``ImageTensor``):

- **plain DataLoader** (*the baseline*): a map-style Dataset over the paths, ``shuffle=True``.
- **torchdata.nodes**: SamplerWrapper → ParallelMapper(method="process") → Batcher.
- **webdataset**: its own tar shards (``ShardWriter``, 8 shards), ``shardshuffle`` + a 1,000
  sample shuffle buffer, ``WebLoader``.
- **litdata**: its own chunks (``optimize``, 8 MB), ``StreamingDataset(shuffle=True)`` +
  ``StreamingDataLoader``.
- **mosaicml-streaming**: its own MDS shards (``MDSWriter``, 8 MB), ``StreamingDataset(shuffle=True)``.
- **sdsnodes**: ``build_image_graph`` on an index of the raw files (no conversion), through
  ``StatefulDataLoader(num_workers=2)``.

Per loader and repeat (order alternating): samples/s over the epoch (worker start-up included),
first-batch latency, CPU ms per image (this process and its reaped children), peak PSS (MiB; the
process and its children, ``/proc/*/smaps_rollup`` every 50 ms); every loader's ids are checked
to cover the epoch exactly once. The conversions are timed apart (once). Data: ``--num-images``
(2,000; 128 with ``--quick``) grainy 256x256 JPEGs (~40 KB, as in ``bench_image``).

``--plot`` writes ``docs/img/peers_*.png`` and regenerates ``docs/comparison.md``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import _peers
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

NAME = "peers"
DESCRIPTION = (
    "local JPEGs -> 224 crop, one shuffled epoch: sdsnodes vs plain DataLoader, torchdata.nodes, "
    "webdataset, litdata, mosaicml-streaming (samples/s, first batch, CPU ms/image, peak PSS)"
)
BASE = "plain DataLoader"
OURS = "sdsnodes (raw files)"
METRICS = {  # key: (table title, unit, higher is better)
    "rate": ("samples/s", "samples/s", True),
    "first": ("first-batch latency", "s", False),
    "cpu_ms": ("CPU ms per image", "ms", False),
    "pss": ("peak PSS", "MiB", False),
}
CLIP_METRICS = {
    "clip_rate": ("16-frame clips/s", "clips/s", True),
    "clip_pss": ("peak PSS, clips", "MiB", False),
}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=3)
    add = parser.add_argument
    add("--num-images", type=int, default=None, help="256x256 JPEGs (2000; 128 with --quick)")
    add("--num-workers", type=int, default=2, help="worker processes of every loader (2)")
    add("--batch-size", type=int, default=32, help="batch size (32)")
    add("--num-videos", type=int, default=None, help="3 s H.264 videos (96; 8 with --quick)")
    add("--task", default="images,clips", help="comma-separated: images, clips, s3 (images,clips)")
    add("--only", default="", help="comma-separated loader names to run (default: all)")
    add(
        "--moto-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="s3 task: the moto server's processes once everything is uploaded, forked onto one "
        "port, so that it can use the cores the bound counts (os.cpu_count()); 1: one process, "
        "the same server as python -m moto.server, which its GIL holds near one core",
    )
    add("--plot", action="store_true", help="write docs/img/peers_*.png and docs/comparison.md")
    add(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="rewrite the page from saved --json runs (images, clips, s3) without measuring",
    )
    add("--docs", type=Path, default=None, help="the docs folder --plot writes to (docs/)")
    return parser.parse_args(argv)


def prepare(paths: list[str], root: Path, workers: int) -> tuple[dict, dict[str, float]]:
    """Each peer's conversion, timed; the readers' arguments and the seconds per conversion."""
    import litdata  # noqa: F401 - imports are not part of the conversions' times
    import streaming  # noqa: F401
    import webdataset  # noqa: F401

    n = len(paths)
    seconds, made = {}, {}
    seconds["webdataset"], made["wds"] = timed(
        lambda: _peers.convert_webdataset(paths, root / f"wds-{n}", shards=8)
    )
    seconds["litdata"], made["litdata"] = timed(
        lambda: _peers.convert_litdata(paths, root / f"litdata-{n}", workers)
    )
    seconds["mosaicml-streaming"], made["mds"] = timed(
        lambda: _peers.convert_mosaic(paths, root / f"mds-{n}")
    )
    seconds[OURS], made["index"] = timed(
        lambda: _peers.write_index(paths, root / f"index-{n}.parquet")
    )
    return made, seconds


def loaders(paths: list[str], made: dict, root: Path, w: int, b: int) -> dict[str, Callable]:
    cache = str(root / "sds-cache")
    return {
        BASE: functools.partial(_peers.plain, paths, w, b),
        "torchdata.nodes": functools.partial(_peers.torchdata_nodes, paths, w, b),
        "webdataset": functools.partial(_peers.webdataset_reader, made["wds"], w, b),
        "litdata": functools.partial(_peers.litdata_reader, made["litdata"], w, b),
        "mosaicml-streaming": functools.partial(_peers.mosaic_reader, made["mds"], w, b),
        OURS: functools.partial(_peers.sdsnodes_reader, made["index"], cache, w, b),
    }


def summarize(rows: dict[str, dict[str, Result]], metrics: dict = METRICS) -> str:
    """Each metric's table, with the ratio to the best peer in each row's note."""
    out = []
    for key, (title, unit, higher) in metrics.items():
        results = list(rows[key].values())
        peers = [r for r in results if r.name != OURS and r.values] or results
        best = (max if higher else min)(peers, key=lambda r: r.median)
        for r in results:
            factor = r.median / best.median if best.median else float("nan")
            r.note = "; ".join(filter(None, [f"{factor:.2f}x the best peer ({best.name})", r.note]))
        direction = "higher" if higher else "lower"
        out.append(format_table(results, title=f"peers: {title} ({unit}, {direction} is better)"))
    return "\n\n".join(out)


def run_clips(args: argparse.Namespace, repeats: int) -> dict[str, dict[str, Result]]:
    """The clip task: clips/s and peak PSS per loader, medians of ``repeats``."""
    from benchmarks import _peers_clips
    from benchmarks.bench_video import Config, prepare

    count = args.num_videos or (8 if args.quick else 96)
    root = (args.dir or default_data_dir()) / "peers"
    cfg = Config(num_videos=count, seconds=3.0, width=256, height=192, num_frames=16, fps=8.0,
                 size=112, batch_size=8, num_workers=args.num_workers, num_threads=4,
                 download_threads=4, repeats=repeats)  # fmt: skip
    index = prepare(root / f"videos-{count}", cfg)
    import pyarrow.parquet as pq

    paths = pq.read_table(index, columns=["video"]).column("video").to_pylist()
    table = _peers_clips.loaders(paths, str(index), str(root / "sds-clip-cache"), args.num_workers)
    print(f"clips: {count} H.264 videos 256x192, 3 s -> 16 frames at 8 fps, 112 crop; batch 8",
          flush=True)  # fmt: skip
    rows = {
        key: {name: Result(name, unit=unit, group=title, baseline=name == BASE) for name in table}
        for key, (title, unit, _) in CLIP_METRICS.items()
    }
    shape = (_peers_clips.FRAMES, 3, _peers_clips.SIZE, _peers_clips.SIZE)
    failed: collections.Counter = collections.Counter()
    for repeat in range(repeats):
        for name in in_turn(list(table), repeat):
            m = _isolated(table[name], count, shape, name, repeat, repeats, failed)
            if m is None:
                continue
            rows["clip_rate"][name].values.append(count / m["wall"])
            rows["clip_pss"][name].values.append(m["pss"])
            print(f"  repeat {repeat + 1}/{repeats}  {name}: {m['wall']:.2f} s, peak PSS "
                  f"{m['pss']:.0f} MiB", flush=True)  # fmt: skip
    _note_failures(rows, failed, repeats)
    return rows


IMAGE_SHAPE = (3, _peers.SIZE, _peers.SIZE)
"""The shape of every image of a batch (``_peers.run_isolated`` checks it)."""


def _isolated(make, count, shape, name, repeat, repeats, failed) -> dict[str, float] | None:
    """One epoch of ``name`` in a fresh process (``_peers.run_isolated``), or None when it failed
    or hung: printed and counted in ``failed`` (the row's median is then over the repeats that
    ran; a row with none reads nan)."""
    try:
        return _peers.run_isolated(make, count, shape)
    except RuntimeError as error:
        print(f"  repeat {repeat + 1}/{repeats}  {name}: FAILED ({error})", flush=True)
        failed[name] += 1
        return None


def _note_failures(rows, failed: collections.Counter, repeats: int) -> None:
    for name, n in failed.items():
        for group in rows.values():
            group[name].note = f"{n} of {repeats} repeats failed"


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_warnings()
    args = parse(argv)
    from benchmarks.bench_image import make_images

    if args.from_json:
        from benchmarks._peers_page import rows_from_json, write_page

        rows, config = rows_from_json(args.from_json)
        for path in write_page(rows, config.get("convert_s", {}), config, args.docs):
            print(f"wrote {path}")
        return 0
    repeats = repeats_of(args)
    tasks = args.task.split(",")
    clip_rows = run_clips(args, repeats) if "clips" in tasks else {}
    if "s3" in tasks:
        from benchmarks._peers_s3 import run_s3, summarize_s3

        count = args.num_images or (128 if args.quick else 2000)
        data = args.dir or default_data_dir()
        s3_rows = run_s3(args, make_images(data / "image" / "jpeg-256", count, 256, 256), repeats)
        print(summarize_s3(s3_rows))
        if args.json:
            print(f"wrote {write_json(NAME + '_s3', s3_rows, {**vars(args), 'repeats': repeats})}")
    if "images" not in tasks:
        if not clip_rows:
            return 0
        print(summarize(clip_rows, CLIP_METRICS))
        results = [r for group in clip_rows.values() for r in group.values()]
        config = {**vars(args), "num_videos": args.num_videos, "repeats": repeats}
        if args.json:
            print(f"wrote {write_json(NAME + '_clips', results, config)}")
        return 0
    count = args.num_images or (128 if args.quick else 2000)
    root = (args.dir or default_data_dir()) / "peers"
    paths = make_images((args.dir or default_data_dir()) / "image" / "jpeg-256", count, 256, 256)
    made, convert_s = prepare(paths, root, args.num_workers)
    table = loaders(paths, made, root, args.num_workers, args.batch_size)
    if args.only:
        table = {k: v for k, v in table.items() if k in args.only.split(",") or k == BASE}
    print(
        f"data: {count} JPEGs 256x256 -> {_peers.SIZE} crop; {args.num_workers} workers, batch "
        f"{args.batch_size}; {repeats} repeat(s), order alternating; {os.cpu_count()} CPUs\n"
        "conversion s: " + ", ".join(f"{k} {v:.2f}" for k, v in convert_s.items()),
        flush=True,
    )
    rows = {
        key: {name: Result(name, unit=unit, group=title, baseline=name == BASE) for name in table}
        for key, (title, unit, _) in METRICS.items()
    }
    failed: collections.Counter = collections.Counter()
    for repeat in range(repeats):
        for name in in_turn(list(table), repeat):
            m = _isolated(table[name], count, IMAGE_SHAPE, name, repeat, repeats, failed)
            if m is None:
                continue
            values = {"rate": count / m["wall"], "first": m["first"],
                      "cpu_ms": 1000 * m["cpu"] / count, "pss": m["pss"]}  # fmt: skip
            for key, value in values.items():
                rows[key][name].values.append(value)
            print(
                f"  repeat {repeat + 1}/{repeats}  {name}: {m['wall']:.2f} s, first batch "
                f"{m['first']:.2f} s, {m['cpu']:.2f} CPU s, peak PSS {m['pss']:.0f} MiB",
                flush=True,
            )
    _note_failures(rows, failed, repeats)
    print()
    print(summarize(rows))
    if clip_rows:
        print()
        print(summarize(clip_rows, CLIP_METRICS))
    rows.update(clip_rows)
    results = [r for group in rows.values() for r in group.values()]
    config = {**vars(args), "num_images": count, "repeats": repeats, "convert_s": convert_s}
    if args.json:
        print(f"wrote {write_json(NAME, results, config)}")
    if args.plot:
        from benchmarks._peers_page import write_page

        for path in write_page(rows, convert_s, config, args.docs):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
