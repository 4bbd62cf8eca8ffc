"""Run the benchmarks: ``python -m benchmarks.run [NAME ...] [--quick] [--repeats N] [--list]``.

Discovers the modules ``benchmarks/bench_*.py``; each exposes ``NAME``, ``DESCRIPTION`` and
``main(argv) -> int``. With no NAME every benchmark runs. Options the runner does not know
(``--dir``, ``--num-workers``…) are passed on to each benchmark that runs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "benchmarks"
PREFIX = "bench_"


def discover() -> dict[str, ModuleType]:
    """Every benchmark module, by its ``NAME``, in file-name order."""
    found: dict[str, ModuleType] = {}
    folder = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda m: m.name):
        if not info.name.startswith(PREFIX):
            continue
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        name = getattr(module, "NAME", info.name[len(PREFIX) :])
        if not callable(getattr(module, "main", None)):
            raise SystemExit(f"{module.__name__} has no main(argv) -> int")
        found[name] = module
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Run sdsnodes benchmarks; each prints a table against a baseline measured in "
        "the same run. Unknown options are passed on to the benchmarks.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--quick", action="store_true", help="small configs (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    parser.add_argument("--json", action="store_true", help="write benchmarks/results/<name>.json")
    args, rest = parser.parse_known_args(argv)
    benchmarks = discover()
    if args.list:
        width = max((len(n) for n in benchmarks), default=0)
        for name, module in benchmarks.items():
            print(f"{name:<{width}}  {getattr(module, 'DESCRIPTION', '')}")
        return 0
    unknown = [n for n in args.names if n not in benchmarks]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {sorted(benchmarks)} (see --list)")
    passed = list(rest)
    if args.quick:
        passed.append("--quick")
    if args.repeats is not None:
        passed += ["--repeats", str(args.repeats)]
    if args.json:
        passed.append("--json")
    status = 0
    for name in args.names or list(benchmarks):
        print(f"== {name}: {getattr(benchmarks[name], 'DESCRIPTION', '')}", flush=True)
        start = time.perf_counter()
        code = int(benchmarks[name].main(passed) or 0)
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.1f} s\n", flush=True)
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
