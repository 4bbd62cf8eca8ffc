"""The figures of the fault and soak suite (issue 10): runs ``tests/faults`` and collects them.

Runs ``python -m pytest tests/faults -s -q -p no:cacheprovider`` in a subprocess (the fast,
seeded slice that CI runs; ``--long`` sets ``SDS_FAULTS=long`` for the long run: ≥ 200 resume
trials, a 10-minute soak, more kills and faults), echoes its output, and collects every line
``FIGURE <name>: <text>`` the tests print. Then it prints:

- the summary line of the issue, ``resume: … · kills: … · soak: … · faults: … · hostile: … ·
  forks: … · disk: …`` (a name printed by several tests, one per case, reads ``N cases
  (table)``; a name no test printed reads ``—``);
- a table of every figure line, in the order printed;
- pytest's own last line (passed, failed, seconds).

Nothing is timed against a baseline here: the figures are the suite's counts (trials, kills,
bytes, leaks), and its time is the time of the run. The exit status is pytest's, so a failing
test shows. ``--json`` writes ``benchmarks/results/faults.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import RESULTS_DIR, add_common_args, machine

NAME = "faults"
DESCRIPTION = (
    "runs the fault and soak suite (tests/faults, fast slice or --long) and prints its "
    "figures: resume, kills, soak, faults, hostile, forks, disk"
)

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ("resume", "kills", "soak", "faults", "hostile", "forks", "disk")
"""The figures of the issue's summary line, in its order."""

# pytest -q prints each test's outcome (".", "F", "E", "s", "x", "X") on the line where the
# next test's output starts, so a figure may follow a few of those characters.
_FIGURE = re.compile(r"^[.FEsxX]*FIGURE (?P<name>[^:\s]+): (?P<text>.*?)\s*$")
_PYTEST_LAST = re.compile(r"^=*\s*(?P<text>\d+ (passed|failed|error).*?)\s*=*$")


def parse_figures(lines: Sequence[str]) -> list[tuple[str, str]]:
    """The ``(name, text)`` of every ``FIGURE <name>: <text>`` line, in order."""
    found = []
    for line in lines:
        match = _FIGURE.match(line)
        if match:
            found.append((match["name"], match["text"]))
    return found


def summary_line(figures: Sequence[tuple[str, str]]) -> str:
    """``resume: … · kills: … · …``: each summary name's text; ``N cases (table)`` where several
    lines share the name; ``—`` where none has it."""
    parts = []
    for name in SUMMARY:
        texts = [text for n, text in figures if n == name]
        value = texts[0] if len(texts) == 1 else f"{len(texts)} cases (table)" if texts else "—"
        parts.append(f"{name}: {value}")
    return " · ".join(parts)


def format_figures(figures: Sequence[tuple[str, str]]) -> str:
    """The figure lines as a two-column table (figure, what the test printed)."""
    width = max([len("figure")] + [len(n) for n, _ in figures])
    lines = [f"{'figure':<{width}}  measured", "-" * (width + 60)]
    lines += [f"{name:<{width}}  {text}" for name, text in figures]
    return "\n".join(lines)


def run_suite(paths: Sequence[str], long: bool, seed: int | None, select: str | None):
    """Run pytest on ``paths``; echo its output; return (exit status, output lines, seconds)."""
    env = dict(os.environ)
    env.pop("SDS_FAULTS", None)
    if long:
        env["SDS_FAULTS"] = "long"
    if seed is not None:
        env["SDS_FAULTS_SEED"] = str(seed)
    cmd = [sys.executable, "-m", "pytest", *paths, "-s", "-q", "-p", "no:cacheprovider"]
    if select:
        cmd += ["-k", select]
    print("$ " + " ".join(cmd) + ("  (SDS_FAULTS=long)" if long else ""), flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace",
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print(line, end="", flush=True)
    return proc.returncode, lines, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_faults", description=__doc__)
    add_common_args(parser, repeats=1)
    parser.add_argument(
        "--long", action="store_true", help="the long run (SDS_FAULTS=long; ~20 minutes or more)"
    )
    parser.add_argument("--seed", type=int, default=None, help="SDS_FAULTS_SEED for the suite")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    parser.add_argument(
        "--paths", nargs="+", default=["tests/faults"], help="test paths (default tests/faults)"
    )
    args = parser.parse_args(argv)  # --quick, --repeats, --dir: accepted, unused (one run)
    status, lines, seconds = run_suite(args.paths, args.long, args.seed, args.select)
    figures = parse_figures(lines)
    last = next((m["text"] for line in reversed(lines) if (m := _PYTEST_LAST.match(line))), "")
    size = "long run (SDS_FAULTS=long)" if args.long else "fast seeded slice"
    print()
    print(f"faults: figures of tests/faults, {size}, {seconds:.0f} s")
    print()
    print(summary_line(figures))
    print()
    print(format_figures(figures))
    print()
    print(f"pytest: {last or 'no result line'} (exit {status})")
    if args.json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{NAME}.json"
        payload = {
            "benchmark": NAME, "machine": machine(), "long": args.long, "seed": args.seed,
            "seconds": seconds, "pytest": last, "exit": status, "summary": summary_line(figures),
            "figures": [{"name": n, "text": t} for n, t in figures],
        }  # fmt: skip
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
