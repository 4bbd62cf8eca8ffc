"""Forked DataLoader workers and the garbage collector: ``freeze_worker_heap`` on vs off.

A forked worker inherits the training process's heap and the collector's counters, so its
first full (generation 2) collection comes within its first batches and walks every inherited
object, writing to each one's header: CPU, and copies of pages the processes shared. With
``StreamingDataset(freeze_worker_heap=True)`` (the default) each worker calls ``gc.freeze()``
before building its graph (:func:`sdsnodes.dataset.freeze_inherited_heap`); ``False`` is the
baseline.

The task is ``bench_peers``' S3 one (``--task s3``, the default): ``--num-images`` JPEGs
(256x256) on a moto server on 127.0.0.1, read as raw ``s3://`` files into a fresh (cold) cache
folder per epoch, → 224x224 crops with ``build_image_graph`` (its defaults), one shuffled epoch
through ``StatefulDataLoader`` (``--num-workers`` forked workers, batches of 32). ``--task
local`` reads the same JPEGs from local disk: its workers make almost no cyclic garbage, so
they seldom collect at all, and the two settings should measure the same.

Every epoch is the first of a fresh (spawned) process, as a training script's first epoch, the
two settings in turn (``benchmarks._peers.in_fresh_process``): before timing, that process
imports what the peers' benchmark imports (torch, torchdata, PyAV, Pillow, pyarrow, sdsnodes,
and webdataset / litdata / streaming when installed) and holds ``--heap-objects`` more small
objects (a model's modules, a vocabulary…). Reported per setting: samples/s, CPU ms per sample
(that process and its reaped workers), the CPU seconds the workers spent in full collections (a
``gc.callbacks`` hook the workers inherit, summed into shared memory) and the peak PSS of the
process tree (``/proc/*/smaps_rollup``, every 50 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import multiprocessing
import os
import shutil
import statistics
import tempfile
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
    silence_known_warnings,
    write_json,
)
from benchmarks.bench_image import cpu_seconds, make_images

NAME = "worker_gc"
DESCRIPTION = "forked workers' full collections: StreamingDataset(freeze_worker_heap) on vs off"
SETTINGS = {"freeze_worker_heap=False": False, "freeze_worker_heap=True (default)": True}

_full_gc_s: Any = None  # RawArray('d', 1): CPU seconds of full collections in the workers
_started: list[float] = []


def _count_full_collections(phase: str, info: dict[str, int]) -> None:
    """``gc.callbacks`` hook: the CPU time of each generation-2 collection in a worker."""
    if info["generation"] != 2 or multiprocessing.parent_process() is None:
        return
    if phase == "start":
        _started[:] = [time.process_time()]
    elif _started:
        _full_gc_s[0] += time.process_time() - _started[0]


def epoch(index: str, options: dict | None, workers: int, freeze: bool) -> int:
    """One epoch of the image graph through StatefulDataLoader (a fresh cache folder when
    ``options`` are S3's); the samples delivered."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import CacheOptions, FetchOptions, StreamingDataset, build_image_graph

    cache = tempfile.mkdtemp(prefix="sds-bench-worker-gc-")
    remote = {}
    if options is not None:
        remote = {"cache": CacheOptions(cache), "fetch": FetchOptions(options)}
    build = functools.partial(build_image_graph, index, size=224, batch_size=32, **remote)
    dataset = StreamingDataset(build, freeze_worker_heap=freeze)
    loader = StatefulDataLoader(dataset, batch_size=None, num_workers=workers)
    try:
        return sum(int(batch["image"].shape[0]) for batch in loader)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _first_epoch(index: str, options: dict | None, workers: int, freeze: bool, heap: int) -> tuple:
    """Run in a fresh process (:func:`benchmarks._peers.in_fresh_process`, which imported what
    ``bench_peers`` imports), as a training script's first epoch: hold ``heap`` more objects,
    then time one epoch; (samples, wall s, CPU s, workers' full-collection CPU s, peak PSS MiB,
    objects tracked)."""
    global _full_gc_s
    from benchmarks._peers import PeakPss

    held = [{"i": i} for i in range(heap)]
    _full_gc_s = multiprocessing.RawArray("d", 1)
    gc.callbacks.append(_count_full_collections)
    tracked = len(gc.get_objects())
    cpu0, start = cpu_seconds(), time.perf_counter()
    with PeakPss() as peak:
        got = epoch(index, options, workers, freeze)
    wall, used = time.perf_counter() - start, cpu_seconds() - cpu0
    del held
    return got, wall, used, _full_gc_s[0], peak.peak, tracked


def main(argv: Sequence[str] | None = None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run worker_gc", description=__doc__)
    add_common_args(parser, repeats=5)
    parser.add_argument("--task", choices=("s3", "local"), default="s3")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--heap-objects", type=int, default=0,
                        help="small objects this process holds beside the imports")  # fmt: skip
    args = parser.parse_args(argv)
    silence_known_warnings()
    count = 256 if args.quick else args.num_images
    paths = make_images((args.dir or default_data_dir()) / "image" / "jpeg-256", count, 256, 256)
    work = tempfile.mkdtemp(prefix="sds-bench-worker-gc-")
    index = os.path.join(work, "index.parquet")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        options = None
        if args.task == "s3":
            server = stack.enter_context(_moto())
            fs, options = server.fs(), server.storage_options
            server.make_bucket("bench")
            urls = [f"s3://bench/raw/{i:06d}.jpg" for i in range(count)]
            for path, url in zip(paths, urls):
                fs.put_file(path, url)
            paths = urls
        pq.write_table(pa.table({"image": paths, "caption": [str(i) for i in range(count)]}),
                       index)  # fmt: skip
        return _measure(args, count, index, options)


def _moto():
    from benchmarks.bench_remote import import_servers

    servers = import_servers()
    os.environ.update(servers.s3.CLIENT_ENV)
    return servers.s3.S3Server()


def _measure(args: argparse.Namespace, count: int, index: str, options: dict | None) -> int:
    from benchmarks._peers import in_fresh_process

    rows = {name: Result(name, unit="samples/s", baseline=not on) for name, on in SETTINGS.items()}
    cpu: dict[str, list[float]] = {name: [] for name in SETTINGS}
    full: dict[str, list[float]] = {name: [] for name in SETTINGS}
    pss: dict[str, list[float]] = {name: [] for name in SETTINGS}
    tracked = 0
    for r in range(repeats_of(args)):
        for name in in_turn(list(SETTINGS), r):
            got, wall, used, gc_s, peak, tracked = in_fresh_process(
                _first_epoch, index, options, args.num_workers, SETTINGS[name], args.heap_objects
            )
            if got != count:
                raise SystemExit(f"{name}: {got} samples, expected {count}")
            rows[name].values.append(got / wall)
            cpu[name].append(1000 * used / got)
            full[name].append(gc_s)
            pss[name].append(peak)
            print(f"  repeat {r + 1}  {name}: {got / wall:.0f} samples/s, CPU "
                  f"{1000 * used / got:.2f} ms/sample, workers' full collections {gc_s:.2f} s, "
                  f"peak PSS {peak:.0f} MiB", flush=True)  # fmt: skip
    print(f"\n{count} JPEGs ({args.task}), {args.num_workers} forked workers, each epoch the "
          f"first of a fresh process tracking {tracked:,} objects")  # fmt: skip
    print(format_table(list(rows.values()), "worker_gc: samples/s (higher is better)"))
    base = next(name for name, on in SETTINGS.items() if not on)
    print(f"{'setting':<36}{'CPU ms/sample':>15}{'full GC s (workers)':>21}{'peak PSS MiB':>14}")
    for name in SETTINGS:
        c, f, p = (statistics.median(v[name]) for v in (cpu, full, pss))
        ratio = c / statistics.median(cpu[base])
        print(f"{name:<36}{c:>9.2f} ({ratio:.2f}x){f:>21.2f}{p:>14.0f}")
    print(f"medians of {repeats_of(args)}; baseline: {base}")
    if args.json:
        write_json(NAME, list(rows.values()), {"task": args.task, "images": count,
                                               "workers": args.num_workers,
                                               "tracked_objects": tracked})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
