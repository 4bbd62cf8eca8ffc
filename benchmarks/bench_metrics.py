"""The cost of the metrics (``sdsnodes.stats``): the image graph with counting on vs off.

Counting is on in every :class:`~sdsnodes.StreamingDataset`; ``SDS_METRICS=0`` when the dataset
is made turns it off (the baseline). Both rows run in the same process, alternating order.

Data: ``--num-images`` (1024) small images made by ``sdsnodes._synthetic.make_image_dataset``
(64x48 px JPEG/PNG/WebP, ~2 KB): tiny files decode fast, so the per-sample cost of the counting
(a timer around each node's ``next()``, one around each codec call, a snapshot written to shared
memory every 50 ms) weighs as much as it ever does; bigger media dilute it.

Table 1, ``build_image_graph(size=64, batch_size=32, num_threads=--num-threads)`` through
``StatefulDataLoader(num_workers=--num-workers)``, one full epoch (worker start-up included), in
samples per wall second and per CPU second (this process and its reaped workers).

Table 2, the same graph through ``torchdata.nodes.Loader`` in this process (instrumented with
``sdsnodes.instrument`` or not): no worker start-up or IPC to hide the timers' cost.

Last, the cost from its parts, which a loaded machine's noise does not hide: the timed calls per
sample (node ``next()`` calls and codec calls, counted by ``stats`` over one epoch) times the CPU
one timed call adds over a bare one (loops of 200k calls, median of 5), as a share of the graph's
CPU per sample with metrics off. It leaves out the snapshot each worker writes every 50 ms.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
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
from benchmarks.bench_image import cpu_seconds  # this process's and its reaped workers'

NAME = "metrics"
DESCRIPTION = "the cost of counting (sdsnodes.stats): the image graph with metrics on vs off"
WALL = "samples per wall second"
CORE = "samples per CPU second (per core used)"


def workers_epoch(build: Callable, num_workers: int, on: bool) -> int:
    """One epoch through StatefulDataLoader, counting ``on`` or off; the samples delivered."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import StreamingDataset
    from sdsnodes.metrics import ENV, stats

    os.environ[ENV] = "1" if on else "0"
    try:
        dataset = StreamingDataset(build)
    finally:
        os.environ.pop(ENV, None)
    loader = StatefulDataLoader(dataset, batch_size=None, num_workers=num_workers)
    delivered = sum(int(batch["image"].shape[0]) for batch in loader)
    counted = stats(loader)["samples"]
    if counted != (delivered if on else 0):
        raise SystemExit(f"stats() counted {counted} samples, the loader delivered {delivered}")
    return delivered


def loader_epoch(build: Callable, on: bool) -> int:
    """One epoch through ``torchdata.nodes.Loader`` in this process (1 torch thread)."""
    import torch
    from torchdata.nodes import Loader

    from sdsnodes import shutdown
    from sdsnodes.metrics import instrument

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    graph = build()
    if on:
        instrument(graph)
    try:
        return sum(int(batch["image"].shape[0]) for batch in Loader(graph))
    finally:
        shutdown(graph)
        torch.set_num_threads(threads)


def _added_us(bare: Callable[[], Any], timed: Callable[[], Any], calls: int = 200_000) -> float:
    """Microseconds of CPU ``timed()`` takes over ``bare()`` per call (median of 5 loops)."""
    costs = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            bare()
        middle = time.process_time()
        for _ in range(calls):
            timed()
        costs.append(((time.process_time() - middle) - (middle - start)) / calls * 1e6)
    return statistics.median(costs)


def timer_costs_us() -> tuple[float, float]:
    """CPU microseconds a node's timed ``next()`` and a timed codec call add per call."""
    from sdsnodes._metrics_record import NodeCounters, _timed_next, _TimedCodec

    def next_() -> int:
        return 1

    def codec(value: int, rng: Any) -> int:
        return value

    node = _added_us(next_, _timed_next(NodeCounters(), NodeCounters(), next_))
    timed_codec = _TimedCodec(codec, "codec")
    return node, _added_us(lambda: codec(1, None), lambda: timed_codec(1, None))


def calls_per_sample(build: Callable) -> tuple[float, float]:
    """Timed node calls and codec calls per sample in one epoch of the graph."""
    from torchdata.nodes import Loader

    from sdsnodes import shutdown
    from sdsnodes.metrics import instrument, stats

    graph = instrument(build())
    try:
        for _ in Loader(graph):
            pass
        s = stats(graph)
    finally:
        shutdown(graph)
    nodes = sum(n["items"] for n in s["nodes"].values())
    return nodes / s["samples"], sum(s["decoded"].values()) / s["samples"]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"bench_{NAME}", description=DESCRIPTION)
    parser.add_argument("--num-images", type=int, default=None, help="images (1024; 64 quick)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--num-threads", type=int, default=2)
    add_common_args(parser, repeats=5)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_warnings()
    args = parse(argv)
    from sdsnodes import ErrorOptions, build_image_graph
    from sdsnodes._synthetic import make_image_dataset

    repeats = repeats_of(args)
    count = args.num_images or (64 if args.quick else 1024)
    index = make_image_dataset(
        (args.dir or default_data_dir()) / f"metrics-{count}", num_images=count
    )
    build = functools.partial(
        build_image_graph, str(index), size=64, batch_size=32, num_threads=args.num_threads,
        errors=ErrorOptions(on_error="raise"),
    )  # fmt: skip
    n = args.num_workers
    print(
        f"data: {count} images 64x48 (make_image_dataset); graph: {n} workers x "
        f"{args.num_threads} threads, batch 32, output 64x64; {repeats} repeat(s), order "
        f"alternating; {os.cpu_count()} CPUs",
        flush=True,
    )
    cases: dict[tuple[str, str], Callable[[], int]] = {
        (f"{n} workers", "metrics off"): lambda: workers_epoch(build, n, False),
        (f"{n} workers", "metrics on"): lambda: workers_epoch(build, n, True),
        ("in this process", "metrics off"): lambda: loader_epoch(build, False),
        ("in this process", "metrics on"): lambda: loader_epoch(build, True),
    }
    rows: dict[tuple[str, str, str], Result] = {}
    for (where, name), _ in cases.items():
        for group in (WALL, CORE):
            unit = "samples/s"
            rows[(where, name, group)] = Result(
                name=name, unit=unit, group=f"{where}: {group}", baseline=name == "metrics off"
            )
    for repeat in range(repeats):
        for key in in_turn(list(cases), repeat):
            cpu, start = cpu_seconds(), time.perf_counter()
            samples = cases[key]()
            wall, used = time.perf_counter() - start, cpu_seconds() - cpu
            rows[(*key, WALL)].values.append(samples / wall)
            rows[(*key, CORE)].values.append(samples / used if used > 0 else float("nan"))
    table = list(rows.values())
    print(format_table(table, title=f"metrics on vs off ({count} images, medians of {repeats})"))
    # the cost from its parts, robust to a noisy machine: timed calls per sample x CPU per call,
    # over the graph's CPU per sample with metrics off (2 workers' row)
    (node_us, codec_us), (node_calls, codec_calls) = timer_costs_us(), calls_per_sample(build)
    base_us = 1e6 / rows[(f"{n} workers", "metrics off", CORE)].median
    added = node_us * node_calls + codec_us * codec_calls
    print(
        f"\ncost model: {node_calls:.1f} timed next() per sample x {node_us:.2f} us + "
        f"{codec_calls:.1f} timed codec calls x {codec_us:.2f} us = {added:.1f} us of CPU per "
        f"sample, {added / base_us:.2%} of the graph's {base_us:.0f} us per sample with metrics "
        "off (2 workers' median)"
    )
    if args.json:
        config = {"num_images": count, "num_workers": n, "num_threads": args.num_threads,
                  "repeats": repeats}  # fmt: skip
        print(f"wrote {write_json(NAME, table, config)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
