"""What every benchmark shares: arguments, timing, medians, the result table, JSON output.

House rules (see ``benchmarks/README.md``): a benchmark measures its subject and a baseline in the
same run, repeats both ``--repeats`` times alternating their order (the machine is shared and
noisy), and prints the median, min and max of each, and the median's ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where ``--json`` writes ``<benchmark name>.json``."""

DIR_ENV = "SDS_BENCH_DIR"
"""Environment variable naming the folder of cached benchmark data (default below)."""


def default_data_dir() -> Path:
    """``$SDS_BENCH_DIR``, else ``~/.cache/sdsnodes/bench``."""
    return Path(os.environ.get(DIR_ENV) or Path.home() / ".cache" / "sdsnodes" / "bench")


def silence_known_warnings() -> None:
    """Ignore torchdata 0.11's "'set_vital' is deprecated" UserWarning (raised by torch >= 2.14 in
    ``StatefulDataLoader.__init__``), and only that one."""
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def add_common_args(parser: argparse.ArgumentParser, repeats: int = 5) -> None:
    """``--repeats``, ``--quick``, ``--json`` and ``--dir``, the options every benchmark takes."""
    parser.add_argument(
        "--repeats", type=int, default=None,
        help=f"measurements of each loader; the median is reported (default {repeats}, 1 with --quick)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a small config, for smoke tests")
    parser.add_argument(
        "--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/<name>.json"
    )
    parser.add_argument(
        "--dir", type=Path, default=None,
        help=f"folder of the cached synthetic data (default ${DIR_ENV} or ~/.cache/sdsnodes/bench)",
    )  # fmt: skip
    parser.set_defaults(_default_repeats=repeats)


def cold_cache_folder(data_dir: Path | None, prefix: str) -> Path:
    """A fresh folder for a cold-cache benchmark's caches, under the bench data folder
    (``data_dir``, else ``$SDS_BENCH_DIR`` or ``~/.cache/sdsnodes/bench``), not ``/tmp``.

    Why: on an ext4 file system without a journal (this project's VMs), the kernel skips the
    inodes deleted in the last minute (up to six while their table block is dirty) when it picks
    one for a new file (``recently_deleted()`` in ``fs/ext4/ialloc.c``), one by one. Right after
    many deletions in a block group, each file created there costs 0.3-0.9 ms of system CPU
    (measured 2026-12-05) instead of 0.04: the caller keeps each measure's cache until the end
    of the run (deleting 2,000 files before the next measure charged it for them), and ``/tmp``
    is shared with every other job of the machine. A run started within six minutes of another
    run's end pays for that run's deletions too (2026-12-05: 2.6-2.9 client CPU ms per raw S3
    image instead of 2.0-2.2, a fifth of it in ``recently_deleted``, by ``perf``).
    :func:`create_cost` prints what a creation costs where the caches go."""
    root = Path(data_dir or default_data_dir())
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def create_cost(folder: Path, count: int = 200, size: int = 20_000) -> float:
    """System CPU ms per file created and written with ``size`` bytes, in a new folder under
    ``folder`` (``count`` files, left for the caller to delete with ``folder``)."""
    probe = Path(tempfile.mkdtemp(prefix="create-cost-", dir=folder))
    body = b"x" * size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for i in range(count):
        (probe / f"{i}.jpg").write_bytes(body)
    return 1000 * (resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) / count


def repeats_of(args: argparse.Namespace) -> int:
    """The number of repeats asked for: ``--repeats``, else 1 with ``--quick``, else the default.

    Raises:
        SystemExit: ``--repeats`` < 1.
    """
    if args.repeats is not None:
        if args.repeats < 1:
            raise SystemExit(f"--repeats={args.repeats} must be >= 1")
        return args.repeats
    return 1 if args.quick else args._default_repeats


def in_turn(items: Sequence[T], repeat: int) -> list[T]:
    """``items`` in order on even repeats and reversed on odd ones, so that no item always runs
    first (on a warm or cold machine)."""
    return list(items) if repeat % 2 == 0 else list(reversed(items))


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Run ``fn()``; return (seconds of wall time, its result)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@dataclasses.dataclass
class Result:
    """One row of a table: a loader's throughput over the repeats.

    Attributes:
        name (str): the loader (row label).
        values (list[float]): one throughput per repeat, in ``unit``.
        unit (str): e.g. ``"clips/s"``; higher is better.
        group (str): the table the row belongs to (e.g. ``"full epoch"``).
        baseline (bool): the row the others are compared to (one per group).
        note (str): a short remark printed after the row.
    """

    name: str
    values: list[float] = dataclasses.field(default_factory=list)
    unit: str = "items/s"
    group: str = ""
    baseline: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def min(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def max(self) -> float:
        return max(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "median": self.median, "min": self.min, "max": self.max,
        }  # fmt: skip


def ratios(rows: Sequence[Result]) -> dict[str, float]:
    """Each row's median over its group's baseline median (NaN where a group has none)."""
    base = {r.group: r.median for r in rows if r.baseline}
    return {
        f"{r.group}/{r.name}": (r.median / base[r.group] if base.get(r.group) else float("nan"))
        for r in rows
    }


def format_table(rows: Sequence[Result], title: str = "") -> str:
    """The rows as a plain-text table, one block per group, with columns ``loader``,
    ``<unit> (median)``, ``min``, ``max`` and ``ratio`` (median / the group's baseline median)."""
    ratio = ratios(rows)
    unit = rows[0].unit if rows else "items/s"
    header = ["loader", f"{unit} (median)", "min", "max", "ratio"]
    lines: list[str] = [title] if title else []
    groups = list(dict.fromkeys(r.group for r in rows))
    width = max([len(header[0])] + [len(r.name) + 2 for r in rows])
    for group in groups:
        members = [r for r in rows if r.group == group]
        base = next((r.name for r in members if r.baseline), None)
        if group or base:
            lines.append("")
            lines.append(f"{group}" + (f" — ratio vs {base}" if base else ""))
        lines.append(
            f"{header[0]:<{width}}  {header[1]:>16}  {header[2]:>8}  {header[3]:>8}  {header[4]:>6}"
        )
        lines.append("-" * (width + 46))
        for r in members:
            mark = "*" if r.baseline else " "
            label = f"{r.name} {mark}"
            row = (
                f"{label:<{width}}  {r.median:>16.1f}  {r.min:>8.1f}  {r.max:>8.1f}  "
                f"{ratio[f'{r.group}/{r.name}']:>6.2f}"
            )
            lines.append(row + (f"  {r.note}" if r.note else ""))
    lines.append("")
    lines.append(
        "* baseline; medians of the repeats, min and max over the repeats; higher is better"
    )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """A short description of where the numbers come from."""
    import torch

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def write_json(name: str, rows: Sequence[Result], config: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json``: the machine, the config and every row."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "benchmark": name,
        "machine": machine(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.items()},
        "results": [r.as_dict() for r in rows],
        "ratios": ratios(rows),
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
