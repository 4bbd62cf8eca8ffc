"""Resume time at 10%, 50% and 90% of a 1M-row epoch, against replaying to the same position.

The graph is the index part of every preset, with no media: ``IndexReader → Shuffler → Batcher +
collate`` over a parquet index of ``--rows`` rows (a ``url`` and a ``caption`` column). For each
position p (a number of batches already consumed):

- **resume**: build a fresh graph, ``Loader(graph)``, ``load_state_dict(state at p)``, and take
  the first batch: what a job restarting from a checkpoint pays. A reader's state is (epoch,
  position), so this should not depend on p.
- **replay** (the baseline): build a fresh graph and iterate from the start of the epoch to p,
  discarding the batches, then take the next one: what a loader without seekable state pays.
  One pass per repeat gives all three positions (the times are cumulative).

The resumed first batch is checked against the replayed one (same keys, same order). Reading the
parquet index is paid by both at graph construction and left out of both (printed apart).

Elastic: the states of a 2-rank job (``Loader`` per rank, explicit ranks) at the same positions
are turned into a cursor with :func:`sdsnodes.elastic_cursor` ("cursor build") and applied to a
3-rank layout with :func:`sdsnodes.load_elastic_state` up to its first batch ("apply").

    python -m benchmarks.run resume                 # 1M rows, 3 repeats (~2 min on 2 cores)
    python -m benchmarks.run resume --quick         # 20k rows, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    in_turn,
    repeats_of,
    silence_known_warnings,
    timed,
    write_json,
)

NAME = "resume"
DESCRIPTION = (
    "resume time at 10/50/90% of a 1M-row epoch vs replaying to it; elastic cursor build + apply"
)

FRACTIONS = (0.1, 0.5, 0.9)
RESUMES_PER_REPEAT = 5  # a resume takes milliseconds: several per repeat steady its median
OLD_WORLD, NEW_WORLD = 2, 3  # the elastic resume: a 2-rank job's states onto 3 ranks


def make_index(root: Path, rows: int) -> Path:
    """Write (or find) ``root/index.parquet``: ``rows`` rows of ``url`` and ``caption`` (str)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    index = root / "index.parquet"
    try:
        if pq.ParquetFile(index).metadata.num_rows == rows:
            return index
    except (OSError, pa.ArrowException):
        pass
    root.mkdir(parents=True, exist_ok=True)
    ids = pa.array(range(rows), pa.int64()).cast(pa.string())
    table = pa.table({
        "url": pc.binary_join_element_wise("s3://bench-bucket/images/", ids, ".jpg", ""),
        "caption": pc.binary_join_element_wise("a synthetic caption for image ", ids, ""),
    })  # fmt: skip
    tmp = index.with_name(f".{index.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(index)
    return index


def make_graph(table: Any, batch_size: int, rank: int | None = None, world_size: int | None = None):
    """IndexReader → Shuffler → Batcher + collate; batches of ``batch_size`` row dicts, collated."""
    from torchdata.nodes import Batcher, Mapper

    from sdsnodes import IndexReader, Shuffler, collate

    reader = IndexReader(table, rank=rank, world_size=world_size)
    return Mapper(
        Batcher(Shuffler(reader, seed=7), batch_size=batch_size, drop_last=False), collate
    )


Clock = tuple[float, float]
"""(wall seconds, CPU seconds of this process): the graph runs no threads, so its CPU time is
its cost, and unlike wall time it is not inflated when other jobs share the machine."""


def now() -> Clock:
    return time.perf_counter(), time.process_time()


def since(start: Clock, paused: Clock = (0.0, 0.0)) -> Clock:
    wall, cpu = now()
    return wall - start[0] - paused[0], cpu - start[1] - paused[1]


def replay(
    table: Any, batch_size: int, points: Sequence[int]
) -> tuple[list[Clock], list[dict], list[list]]:
    """One pass from the start: per point k, the time to the first batch after k batches (the
    ``state_dict()`` calls taken on the way are left out), the state at k and that batch's keys."""
    from torchdata.nodes import Loader

    start = now()
    loader = Loader(make_graph(table, batch_size))
    it = iter(loader)
    times, states, firsts = [], [], []
    paused = (0.0, 0.0)
    done = 0
    for k in points:
        for _ in range(k - done):
            next(it)
        done = k
        pause = now()
        state = json.loads(json.dumps(loader.state_dict()))
        pause = since(pause)
        paused = (paused[0] + pause[0], paused[1] + pause[1])
        states.append(state)
        batch = next(it)
        done += 1
        times.append(since(start, paused))
        firsts.append(batch["__key__"])
    return times, states, firsts


def resume(table: Any, batch_size: int, state: dict) -> tuple[Clock, list]:
    """The time from building a fresh graph and loading ``state`` to its first batch; its keys."""
    from torchdata.nodes import Loader

    start = now()
    loader = Loader(make_graph(table, batch_size))
    loader.load_state_dict(state)
    batch = next(iter(loader))
    return since(start), batch["__key__"]


def old_job_states(table: Any, batch_size: int, points: Sequence[int]) -> list[list[dict]]:
    """The states of every rank of an ``OLD_WORLD``-rank job after k global batches, for each k."""
    from torchdata.nodes import Loader

    loaders = [Loader(make_graph(table, batch_size, r, OLD_WORLD)) for r in range(OLD_WORLD)]
    its = [iter(loader) for loader in loaders]
    out, done = [], 0
    for k in points:
        per_rank = k // OLD_WORLD
        for it in its:
            for _ in range(per_rank - done):
                next(it)
        done = per_rank
        out.append([json.loads(json.dumps(loader.state_dict())) for loader in loaders])
    return out


def elastic(table: Any, batch_size: int, states: list[dict]) -> tuple[Clock, Clock, int, int]:
    """(cursor build, apply + first batch, cursor JSON bytes, skip-list length) for ``states``."""
    from torchdata.nodes import Loader

    from sdsnodes import elastic_cursor, load_elastic_state

    start = now()
    cursor = elastic_cursor(states)
    build = since(start)
    start = now()
    root = make_graph(table, batch_size, 0, NEW_WORLD)
    load_elastic_state(root, cursor)
    next(iter(Loader(root)))
    apply = since(start)
    skip = max(len(r["skip"]) for r in cursor["readers"].values())
    return build, apply, len(json.dumps(cursor)), skip


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=3)
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="rows of the index (default 1,000,000; 20,000 with --quick)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="rows per batch (default 256)")
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 10 * args.batch_size:
        parser.error(f"--rows={args.rows} must be >= 10 x --batch-size")
    if args.batch_size < 1:
        parser.error(f"--batch-size={args.batch_size} must be >= 1")
    return args


def _stats(values: Sequence[float], scale: float, digits: int = 1) -> list[str]:
    """Median, min and max of ``values`` times ``scale``, formatted."""
    return [
        f"{v * scale:,.{digits}f}" for v in (statistics.median(values), min(values), max(values))
    ]


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
    import pyarrow.parquet as pq
    import torchdata.nodes  # noqa: F401 - imported once, here, before any timing

    import sdsnodes  # noqa: F401

    rows, batch_size, repeats = (
        args.rows or (20_000 if args.quick else 1_000_000),
        args.batch_size,
        repeats_of(args),
    )
    root = (args.dir or default_data_dir()) / f"resume-index-{rows}"
    made, index = timed(lambda: make_index(root, rows))
    read, table = timed(lambda: pq.read_table(index))
    batches = -(-rows // batch_size)
    points = [round(f * rows / batch_size) for f in FRACTIONS]
    print(
        f"index: {rows:,} rows (url, caption) in {index} (ready in {made:.1f} s; reading it takes "
        f"{read:.2f} s, paid by both loaders at graph construction, left out below)\n"
        f"graph: IndexReader → Shuffler → Batcher({batch_size}) + collate, {batches:,} batches per "
        f"epoch; {repeats} repeat(s), order alternating",
        flush=True,
    )

    replay(table, batch_size, [1])  # warm-up (first-use costs), untimed
    resumes: list[list[Clock]] = [[] for _ in points]
    replays: list[list[Clock]] = [[] for _ in points]
    states: list[dict] | None = None
    expected: list[list] = []
    status = 0
    for repeat in range(repeats):
        order = (
            in_turn(["replay", "resume"], repeat) if states is not None else ["replay", "resume"]
        )
        for name in order:
            if name == "replay":
                times, states, expected = replay(table, batch_size, points)
                for i, t in enumerate(times):
                    replays[i].append(t)
            else:
                assert states is not None
                for i, state in enumerate(states * RESUMES_PER_REPEAT):
                    i %= len(states)
                    clock, keys = resume(table, batch_size, state)
                    resumes[i].append(clock)
                    if keys != expected[i]:
                        print(
                            f"ERROR: resumed at batch {points[i]} the first batch differs from the replayed one"
                        )
                        status = 1
        print(
            f"  repeat {repeat + 1}/{repeats}: resume "
            + ", ".join(f"{r[-1][0] * 1e3:.0f} ms" for r in resumes)
            + "; replay "
            + ", ".join(f"{r[-1][0]:.2f} s" for r in replays)
            + " (wall)",
            flush=True,
        )

    print(
        f"  building the states of a {OLD_WORLD}-rank job at the same positions (one more pass)...",
        flush=True,
    )
    old_states = old_job_states(table, batch_size, points)
    builds: list[list[Clock]] = [[] for _ in points]
    applies: list[list[Clock]] = [[] for _ in points]
    sizes, skips = [0] * len(points), [0] * len(points)
    for _ in range(repeats):
        for i, st in enumerate(old_states):
            build, apply, sizes[i], skips[i] = elastic(table, batch_size, st)
            builds[i].append(build)
            applies[i].append(apply)

    def cpu(clocks: list[Clock]) -> list[float]:
        return [c[1] for c in clocks]

    def wall(clocks: list[Clock]) -> list[float]:
        return [c[0] for c in clocks]

    results: list[Result] = []
    table_rows = []
    for f, k, res, rep in zip(FRACTIONS, points, resumes, replays):
        group = f"{f:.0%}"
        for name, clocks, base in (("resume", res, False), ("replay", rep, True)):
            results.append(
                Result(f"{name} (CPU)", [v * 1e3 for v in cpu(clocks)], "ms", group, base)
            )
            results.append(Result(f"{name} (wall)", [v * 1e3 for v in wall(clocks)], "ms", group))
        ratio = statistics.median(cpu(rep)) / statistics.median(cpu(res))
        table_rows.append(
            [
                group,
                f"{k:,}",
                *_stats(cpu(res), 1e3),
                f"{statistics.median(wall(res)) * 1e3:,.1f}",
                *_stats(cpu(rep), 1e3),
                f"{statistics.median(wall(rep)) * 1e3:,.1f}",
                f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.1f}",
            ]
        )

    def growth(clocks: list[list[Clock]], which) -> float:
        return statistics.median(which(clocks[-1])) / statistics.median(which(clocks[0]))

    last, first = f"{FRACTIONS[-1]:.0%}", f"{FRACTIONS[0]:.0%}"
    lines = [
        "",
        f"resume: ms to the first batch after a position in a {rows:,}-row epoch (batch "
        f"{batch_size}); CPU time (median, min, max) and wall time (median); lower is better",
        "",
        *format_rows(
            [
                "position",
                "batches",
                "resume CPU ms",
                "min",
                "max",
                "wall",
                "replay CPU ms *",
                "min",
                "max",
                "wall",
                "replay / resume",
            ],
            table_rows,
        ),  # fmt: skip
        "",
        f"resume at {last} / resume at {first}: {growth(resumes, cpu):.2f} CPU, "
        f"{growth(resumes, wall):.2f} wall (flat = 1.00); replay at {last} / at {first}: "
        f"{growth(replays, cpu):.2f} CPU, {growth(replays, wall):.2f} wall",
        "",
        f"elastic: the states of {OLD_WORLD} ranks → elastic_cursor → load_elastic_state on rank 0 "
        f"of {NEW_WORLD}; CPU time (median, min, max) and wall time (median); lower is better",
        "",
    ]
    elastic_rows = []
    for f, b, a, size, skip in zip(FRACTIONS, builds, applies, sizes, skips):
        group = f"elastic {f:.0%}"
        results.append(Result("cursor build (CPU)", [v * 1e6 for v in cpu(b)], "µs", group))
        results.append(Result("apply + first batch (CPU)", [v * 1e3 for v in cpu(a)], "ms", group))
        elastic_rows.append(
            [
                f"{f:.0%}",
                *_stats(cpu(b), 1e6, 0),
                f"{statistics.median(wall(b)) * 1e6:,.0f}",
                *_stats(cpu(a), 1e3),
                f"{statistics.median(wall(a)) * 1e3:,.1f}",
                f"{size:,}",
                str(skip),
            ]
        )
    lines += format_rows(
        ["position", "cursor build CPU µs", "min", "max", "wall",
         "apply + 1st batch CPU ms", "min", "max", "wall", "cursor bytes", "skip list"],
        elastic_rows,
    )  # fmt: skip
    lines += [
        "",
        "* baseline. resume: fresh graph + Loader + load_state_dict + first batch "
        f"({RESUMES_PER_REPEAT} per repeat). replay: fresh graph + Loader, iterate from the "
        "epoch's start",
        "discarding the batches, then the next batch. apply: a fresh 3-rank graph + "
        "load_elastic_state + first batch. Medians, min and max over the repeats.",
    ]
    print("\n".join(lines), flush=True)
    if args.json:
        config = {
            "rows": rows,
            "batch_size": batch_size,
            "repeats": repeats,
            "points": points,
            "dir": str(root),
        }
        print(f"wrote {write_json(NAME, results, config)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
