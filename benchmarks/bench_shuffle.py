"""Shuffle quality at scale: the global Feistel order and the chunk-local order vs an ideal
permutation (``numpy.random.permutation``), on an index sorted by label (the worst case: a
dataset written class by class).

Metrics per mode: distinct labels in a batch of 256 (ideal: close to 256 when there are many
labels), the batch label histogram's total-variation distance from the global one (0 = ideal),
Spearman's rank correlation between position and row (0 = ideal), and the cost per row.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import add_common_args, repeats_of

NAME = "shuffle"
DESCRIPTION = "shuffle quality: Feistel global and chunk-local orders vs an ideal permutation"


def quality(order: np.ndarray, labels: np.ndarray, batch: int = 256) -> dict[str, float]:
    n = len(order)
    num_labels = labels.max() + 1
    global_hist = np.bincount(labels, minlength=num_labels) / n
    distinct, tv = [], []
    for start in range(0, n - batch + 1, max(batch, n // 200)):
        window = labels[order[start : start + batch]]
        distinct.append(len(np.unique(window)))
        tv.append(
            0.5 * np.abs(np.bincount(window, minlength=num_labels) / batch - global_hist).sum()
        )
    ranks = np.argsort(np.argsort(order))
    spearman = np.corrcoef(np.arange(n), ranks)[0, 1]
    return {
        "distinct": float(np.mean(distinct)),
        "tv": float(np.mean(tv)),
        "spearman": float(spearman),
    }


def main(argv: list[str] | None = None) -> int:
    from sdsnodes.index.permutation import ChunkPermutation, FeistelPermutation

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run shuffle", description=__doc__)
    add_common_args(parser, repeats=3)
    parser.add_argument(
        "--rows", type=int, default=None, help="rows (default 200k, 20k with --quick)"
    )
    parser.add_argument("--labels", type=int, default=1000)
    args = parser.parse_args(argv)
    n = args.rows or (20_000 if args.quick else 200_000)
    labels = np.repeat(np.arange(args.labels), -(-n // args.labels))[:n]  # sorted by label
    chunk = max(1, n // 100)
    modes = {
        "numpy permutation (ideal) *": lambda seed: np.random.default_rng(seed).permutation(n),
        "sdsnodes global (Feistel)": lambda seed: np.fromiter(
            map(FeistelPermutation(n, seed, 0), range(n)), np.int64, n
        ),
        f"sdsnodes chunk-local (chunks of {chunk}, window 8)": lambda seed: np.fromiter(
            map(ChunkPermutation(n, chunk, 8, seed, 0), range(n)), np.int64, n
        ),
        f"sdsnodes chunk-local (chunks of {chunk}, window 1)": lambda seed: np.fromiter(
            map(ChunkPermutation(n, chunk, 1, seed, 0), range(n)), np.int64, n
        ),
        "no shuffle": lambda seed: np.arange(n),
    }
    results: dict[str, list[dict]] = {}
    for seed in range(repeats_of(args)):
        for name, make in modes.items():
            start = time.perf_counter()
            order = make(seed)
            seconds = time.perf_counter() - start
            assert np.array_equal(np.sort(order), np.arange(n)), name
            results.setdefault(name, []).append(
                {**quality(order, labels), "us_per_row": seconds / n * 1e6}
            )
    ideal = {
        k: np.median([r[k] for r in results["numpy permutation (ideal) *"]])
        for k in ("distinct", "tv")
    }
    print(
        f"\n{n:,} rows sorted by {args.labels} labels, batches of 256; medians over {repeats_of(args)} seeds"
    )
    print(
        f"{'order':<44}{'distinct/batch':>15}{'ratio':>7}{'TV dist':>9}{'ratio':>7}{'spearman':>10}{'us/row':>8}"
    )
    for name, rs in results.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        print(
            f"{name:<44}{med['distinct']:>15.1f}{med['distinct'] / ideal['distinct']:>7.2f}"
            f"{med['tv']:>9.3f}{med['tv'] / ideal['tv']:>7.2f}{med['spearman']:>10.3f}{med['us_per_row']:>8.2f}"
        )
    print(
        "* the ideal; distinct/batch: higher is better; TV distance and |spearman|: lower is better"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
