"""Bytes downloaded per sample by ``build_text_to_video_graph`` with 4 caption columns, each with
its own precomputed embedding: the caption chosen before the downloads with its own embedding
(a Selector: only that embedding is fetched) against downloading every embedding column.

Data: ``--num-samples`` (32; 8 with ``--quick``) rows, each an H.264 mp4 of 1 s at 24 frames/s
(128x96 px) and 4 (caption, embedding) pairs; each embedding a float16 ``.npy`` of ``--tokens`` x
``--dim`` (77 x 4096, T5-XXL-like: 631 KB; 77 x 1024 with ``--quick``), all served by the
aiohttp test server on 127.0.0.1, whose ``/__stats__`` counts the body bytes it sends.

The two graphs, same index of URLs, same seed, one epoch each through ``torchdata.nodes.Loader``
in this process, a fresh empty cache directory per run:

- **select** (the subject; the default with as many embedding columns as caption columns):
  ``build_text_to_video_graph(caption_column=[c0..c3], embedding_columns=[e0..e3])``: a
  Selector after the Shuffler chooses caption i (seeded, uniform among the non-empty ones) and
  sets the other embedding columns to None, so the CachingDownloader fetches the video and
  ``e_i`` only; the batch holds ``caption_embedding`` [B, tokens, dim].
- **every column** (*the baseline*, the behaviour before the Selector):
  ``pair_embeddings=False``: the caption is chosen in the Decoder, after all 4 embeddings were
  downloaded and decoded.

Printed: bytes the server sent per sample (KB, lower is better; ratio to the baseline), and
samples per wall second of the epoch (decoding included), median, min and max over
``--repeats`` repeats that alternate which graph runs first. The expected byte ratio is
``(video + 1 embedding) / (video + 4 embeddings)``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
    write_json,
)
from benchmarks.bench_remote import import_servers, silence_worker_warnings

NAME = "select"
DESCRIPTION = (
    "bytes downloaded per sample by build_text_to_video_graph with 4 caption-embedding "
    "columns: the chosen caption's embedding only (Selector) vs every embedding column"
)
K = 4  # caption columns, each with its own embedding column
GRAPHS = {"select (Selector, default)": True, "every column": False}
BYTES = "KB downloaded per sample (lower is better)"
SPEED = "samples per wall second"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=3)
    parser.add_argument("--num-samples", type=int, default=None, help="rows (default 32, 8 quick)")
    parser.add_argument("--tokens", type=int, default=77, help="embedding rows (default 77)")
    parser.add_argument(
        "--dim", type=int, default=None, help="embedding width (default 4096, 1024 with --quick)"
    )
    args = parser.parse_args(argv)
    args.num_samples = args.num_samples or (8 if args.quick else 32)
    args.dim = args.dim or (1024 if args.quick else 4096)
    for name in ("num_samples", "tokens", "dim"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def write_data(root: Path, args: argparse.Namespace) -> tuple[dict[str, list[str]], int, int]:
    """The files under ``root`` and the index rows (file names); video and embedding bytes."""
    import numpy as np

    from sdsnodes._synthetic import caption, write_video

    rows: dict[str, list[str]] = {"video": []}
    rows.update({f"caption_{j}": [] for j in range(K)})
    rows.update({f"embedding_{j}": [] for j in range(K)})
    video_bytes = embedding_bytes = 0
    rng = np.random.default_rng(0)
    for i in range(args.num_samples):
        write_video(root / f"v{i:05d}.mp4", num_frames=24, fps=24, width=128, height=96, seed=i)
        video_bytes += (root / f"v{i:05d}.mp4").stat().st_size
        rows["video"].append(f"v{i:05d}.mp4")
        for j in range(K):
            emb = rng.standard_normal((args.tokens, args.dim)).astype(np.float16)
            np.save(root / f"e{i:05d}_{j}.npy", emb)
            embedding_bytes += (root / f"e{i:05d}_{j}.npy").stat().st_size
            rows[f"caption_{j}"].append(f"{caption(i)} ({j})")
            rows[f"embedding_{j}"].append(f"e{i:05d}_{j}.npy")
    return rows, video_bytes, embedding_bytes


def run_graph(server: Any, table: Any, pair: bool, repeat: int, workdir: Path) -> dict[str, float]:
    """One epoch of the graph; the bytes the server sent and the seconds it took."""
    from torchdata.nodes import Loader

    from sdsnodes import CacheOptions, build_text_to_video_graph, shutdown

    cache_dir = workdir / f"cache-{pair}-{repeat}"
    graph = build_text_to_video_graph(
        table, num_frames=8, fps=8.0, size=64, batch_size=4, seed=repeat,
        caption_column=[f"caption_{j}" for j in range(K)],
        embedding_columns=[f"embedding_{j}" for j in range(K)], pair_embeddings=pair,
        cache=CacheOptions(str(cache_dir)), num_threads=2,
    )  # fmt: skip
    server.reset_stats()
    start = time.perf_counter()
    try:
        samples = sum(len(batch["__key__"]) for batch in Loader(graph))
    finally:
        shutdown(graph)
    seconds = time.perf_counter() - start
    sent = server.stats()["bytes"]
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {"samples": samples, "bytes": sent, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    silence_worker_warnings()
    args = parse(argv)
    import pyarrow as pa

    repeats = repeats_of(args)
    servers = import_servers()
    data_dir = args.dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=data_dir, prefix="select-run-"))
    rows_out: list[Result] = []
    try:
        with servers.http.HTTPServer(root=workdir / "served") as server:
            root = server.root / "t2v"
            root.mkdir(parents=True, exist_ok=True)
            rows, video_bytes, embedding_bytes = write_data(root, args)
            files = {"video", *(f"embedding_{j}" for j in range(K))}
            table = pa.table({
                k: [server.url_for(root / v) if k in files else v for v in vs]
                for k, vs in rows.items()
            })  # fmt: skip
            n = args.num_samples
            per_video, per_embedding = video_bytes / n, embedding_bytes / (n * K)
            print(
                f"aiohttp HTTP server on 127.0.0.1: {n} samples, each a 1-s mp4 "
                f"({per_video / 1e3:.0f} KB on average) and {K} caption embeddings of "
                f"{args.tokens}x{args.dim} float16 ({per_embedding / 1e3:.0f} KB each); "
                f"{repeats} repeat(s)",
                flush=True,
            )
            results = {
                name: (
                    Result(name, unit="KB", group=BYTES, baseline=not pair),
                    Result(name, unit="samples/s", group=SPEED, baseline=not pair),
                )
                for name, pair in GRAPHS.items()
            }
            for repeat in range(repeats):
                for name in in_turn(list(GRAPHS), repeat):
                    run = run_graph(server, table, GRAPHS[name], repeat, workdir)
                    if run["samples"] != n:
                        raise SystemExit(f"{name}: {run['samples']} samples of {n}: a skip?")
                    results[name][0].values.append(run["bytes"] / n / 1e3)
                    results[name][1].values.append(n / run["seconds"])
                    print(
                        f"  repeat {repeat + 1}/{repeats}  {name:<27}: "
                        f"{run['bytes'] / n / 1e3:.0f} KB/sample, {n / run['seconds']:.1f} "
                        "samples/s",
                        flush=True,
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows_out = [r for pair in results.values() for r in pair]
    expected = (per_video + per_embedding) / (per_video + K * per_embedding)
    print()
    print(f"{NAME}: {DESCRIPTION}\n")
    for group in (BYTES, SPEED):  # one table each: their units differ
        table = format_table([r for r in rows_out if r.group == group])
        print(table.replace("higher is better", "lower is better") if group == BYTES else table)
        print()
    print(f"expected bytes ratio (video + 1 embedding) / (video + {K}): {expected:.3f}")
    if args.json:
        config = {**vars(args), "expected_ratio": expected, "video_bytes_per_sample": per_video,
                  "embedding_bytes": per_embedding}  # fmt: skip
        print(f"wrote {write_json(NAME, rows_out, config)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
