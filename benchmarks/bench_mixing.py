"""Mixing overhead per batch: a Mixer over 2 or 3 batched streams against a single stream.

Three groups, each against its own single-stream baseline that yields the same batches:

- **pre-built batches**: the streams are nodes handing out batch dicts built in advance (no
  work at all), so the difference from the baseline is the Mixer itself: the draw of the stream
  (a pure function of (strategy, weights, seed, step)), the ``__stream__`` key, the step count.
- **cheap graphs**: each stream is ``IndexReader → Batcher(32) + collate`` over an in-memory
  table (``x`` int64, ``caption`` str), long enough not to run out; the baseline is one such graph. The ratio is what mixing costs a real,
  if cheap, pipeline.
- **with state_dict() per batch**: the pre-built streams again, with ``loader.state_dict()``
  after every batch, as ``StatefulDataLoader``'s workers take it (``snapshot_every_n_steps=1``):
  the Mixer's state holds every stream's state.

Each row is CPU µs per batch (this process's ``time.process_time()``: the loop is single-threaded,
and the machine is shared) over ``--batches`` batches; lower is better; ratio = row / baseline.
Strategies use weights 0.5/0.3/0.2 (3 streams) or 0.6/0.4 (2 streams); "curriculum" gives the
weights as a function of the step.

    python -m benchmarks.run mixing
    python -m benchmarks.run mixing --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._common import (
    Result,
    add_common_args,
    in_turn,
    repeats_of,
    silence_known_warnings,
    write_json,
)

NAME = "mixing"
DESCRIPTION = (
    "Mixer overhead in µs per batch over 2-3 batched streams vs a single stream, per strategy"
)

WEIGHTS = {2: {"a": 0.6, "b": 0.4}, 3: {"a": 0.5, "b": 0.3, "c": 0.2}}


def prebuilt_stream(name: str, batch_size: int):
    """A node cycling over 8 batch dicts built in advance (``x``: int64 [B], ``__key__``: list)."""
    import torch
    from torchdata.nodes import BaseNode

    class Prebuilt(BaseNode[dict]):
        def __init__(self) -> None:
            super().__init__()
            self.batches = [
                {
                    "x": torch.arange(batch_size) + i * batch_size,
                    "__key__": [f"{name}/{j}" for j in range(batch_size)],
                }
                for i in range(8)
            ]
            self.i = 0

        def reset(self, initial_state: dict | None = None) -> None:
            super().reset(initial_state)
            self.i = (initial_state or {}).get("i", 0)

        def next(self) -> dict:
            self.i += 1
            return self.batches[self.i % 8]

        def get_state(self) -> dict:
            return {"i": self.i}

    return Prebuilt()


def graph_stream(name: str, batch_size: int, rows: int):
    """``IndexReader → Batcher + collate`` over an in-memory table of ``rows`` rows (x, caption)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from torchdata.nodes import Batcher, Mapper

    from sdsnodes import IndexReader, collate

    x = pa.array(range(rows), pa.int64())
    table = pa.table(
        {"x": x, "caption": pc.binary_join_element_wise("caption ", x.cast(pa.string()), "")}
    )
    return Mapper(
        Batcher(IndexReader(table, name=name), batch_size=batch_size, drop_last=True), collate
    )


def mixer(make: Callable[[str], Any], streams: int, strategy: str, curriculum: bool = False):
    from sdsnodes import Mixer

    weights = WEIGHTS[streams]
    if curriculum:  # the same weights, as a function of the step
        return Mixer(
            {n: make(n) for n in weights},
            lambda step: weights,
            strategy=strategy,
            stop="never",
            cycle_length=10,
        )
    return Mixer({n: make(n) for n in weights}, weights, strategy=strategy, stop="never")


def time_per_batch(root: Any, batches: int, snapshot: bool) -> float:
    """CPU µs per batch of ``Loader(root)`` over ``batches`` batches, after a first (untimed) one.

    The loop is single-threaded, so this process's CPU time (``time.process_time``) is its cost;
    unlike wall time it is not inflated when other jobs share the cores.

    Every root is first walked with ``iter_nodes``, as ``Mixer()``, ``StreamingDataset`` and
    ``set_epoch`` walk every graph: on CPython 3.11 that turns each node's attributes from inline
    values into a real ``__dict__`` (``vars()``), which makes the per-row code of the stream ~13%
    slower. Walking the baseline too keeps that out of the Mixer's overhead.
    """
    from torchdata.nodes import Loader

    from sdsnodes.nodes.graph import iter_nodes

    list(iter_nodes(root))
    loader = Loader(root)
    it = iter(loader)
    next(it)
    start = time.process_time()
    if snapshot:
        for _ in range(batches):
            next(it)
            loader.state_dict()
    else:
        for _ in range(batches):
            next(it)
    return (time.process_time() - start) / batches * 1e6


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser)
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help="batches per measurement (default 5,000; 500 with --quick)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batch (default 32)")
    args = parser.parse_args(argv)
    if args.batches is not None and args.batches < 1 or args.batch_size < 1:
        parser.error("--batches and --batch-size must be >= 1")
    return args


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))
        )

    return [line(header), "-" * len(line(header)), *(line(r) for r in rows)]


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_warnings()
    args = parse(argv)
    import torchdata.nodes  # noqa: F401 - imported once, here, before any timing

    from sdsnodes import MixStrategy

    batches, bs, repeats = (
        args.batches or (500 if args.quick else 5_000),
        args.batch_size,
        repeats_of(args),
    )
    rows = bs * (batches + 2)  # no graph stream runs out during a measurement
    print(
        f"{batches:,} batches of {bs} per measurement, {repeats} repeat(s), order alternating; "
        f"graph streams: {rows:,}-row tables",
        flush=True,
    )
    prebuilt = lambda n: prebuilt_stream(n, bs)  # noqa: E731
    graph = lambda n: graph_stream(n, bs, rows)  # noqa: E731
    groups: dict[str, tuple[Callable[[str], Any], bool]] = {
        "pre-built batches": (prebuilt, False),
        "cheap graphs (IndexReader → Batcher + collate)": (graph, False),
        "pre-built batches, state_dict() after every batch": (prebuilt, True),
    }
    cases: list[tuple[str, str, Callable[[], Any], bool]] = []  # (group, row, make root, snapshot)
    for group, (make, snapshot) in groups.items():
        cases.append((group, "single stream *", lambda make=make: make("a"), snapshot))
        for strategy in MixStrategy:
            for n in (2, 3) if group == "pre-built batches" else (3,):
                cases.append((group, f"Mixer, {n} streams, {strategy.value}",
                              lambda make=make, n=n, s=strategy: mixer(make, n, s), snapshot))  # fmt: skip
        for strategy in ("weighted_random", "round_robin"):
            cases.append((group, f"Mixer, 3 streams, {strategy}, curriculum",
                          lambda make=make, s=strategy: mixer(make, 3, s, curriculum=True), snapshot))  # fmt: skip

    values: dict[tuple[str, str], list[float]] = {(g, r): [] for g, r, _, _ in cases}
    for repeat in range(repeats):
        for group, row, make_root, snapshot in in_turn(cases, repeat):
            values[group, row].append(time_per_batch(make_root(), batches, snapshot))
        print(f"  repeat {repeat + 1}/{repeats} done", flush=True)

    results, lines = (
        [],
        [
            "",
            "mixing: CPU µs per batch (lower is better); ratio = row / single stream; overhead = row - single stream",
        ],
    )
    for group in groups:
        base = statistics.median(values[group, "single stream *"])
        table = []
        for g, row, _, _ in cases:
            if g != group:
                continue
            v = values[g, row]
            med = statistics.median(v)
            results.append(
                Result(
                    row.rstrip(" *"), v, unit="µs/batch", group=group, baseline=row.endswith("*")
                )
            )
            table.append(
                [
                    row,
                    f"{med:.1f}",
                    f"{min(v):.1f}",
                    f"{max(v):.1f}",
                    f"{med / base:.2f}",
                    f"{med - base:+.1f}",
                ]
            )
        lines += [
            "",
            group,
            *format_rows(
                ["loader", "µs/batch (median)", "min", "max", "ratio", "overhead µs"], table
            ),
        ]
    lines += [
        "",
        "* baseline: one stream of the same batches, no Mixer. Medians, min and max over the repeats.",
    ]
    print("\n".join(lines), flush=True)
    if args.json:
        print(
            f"wrote {write_json(NAME, results, {'batches': batches, 'batch_size': bs, 'repeats': repeats})}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
