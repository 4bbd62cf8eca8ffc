"""The S3 section of ``docs/comparison.md``, from a saved ``bench_peers --task s3 --json`` run
(``benchmarks/results/peers_s3.json`` unless another file is given)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR

BENCHMARK = "peers_s3"
PEERS = ("LitData", "WebDataset", "mosaicml-streaming")


def is_s3_run(path: Path) -> bool:
    """Whether ``path`` holds a saved S3 run (``bench_peers --task s3 --json``)."""
    return json.loads(Path(path).read_text()).get("benchmark") == BENCHMARK


def s3_lines(path: Path | None = None) -> list[str]:
    """Markdown lines: the S3 rows (samples/s, ratio to LitData, the baseline, and to the best
    peer), or where to get them when no run was saved."""
    path = Path(path) if path else RESULTS_DIR / f"{BENCHMARK}.json"
    intro = (
        "The same images from S3 (moto on 127.0.0.1, cold cache: a fresh cache folder every "
        "epoch, kept until the run ends under the bench data folder): "
        "`python -m benchmarks.bench_peers --task s3`."
    )
    if not path.exists():
        return [intro + " Its figures are in the `peers` section of `benchmarks/README.md`."]
    saved: dict[str, Any] = json.loads(path.read_text())
    rows = saved["results"]
    base = next(r for r in rows if r["baseline"])["median"]
    best = max((r for r in rows if r["name"].startswith(PEERS)), key=lambda r: r["median"])
    config, host = saved["config"], saved["machine"]
    lines = [
        "## From S3",
        "",
        f"{intro} Run {host['date'][:16].replace('T', ' ')}, {host['cpus']} CPUs shared with "
        f"other jobs, moto forked into {config.get('moto_processes', 1)} process(es) once the "
        f"data was uploaded: {config.get('num_images') or 2000} JPEGs, {config['num_workers']} "
        f"workers, batches of {config['batch_size']}, medians of {config['repeats']} runs "
        "(order alternating). Each peer reads its own shards uploaded to the same bucket "
        "(mosaicml-streaming through boto3 with `S3_ENDPOINT_URL`, WebDataset over presigned "
        "HTTP URLs); sdsnodes its packed shards or the raw files. The bytes read and the client's "
        "and server's CPU per sample are in the `peers` section of `benchmarks/README.md`.",
        "",
        "| loader | samples/s | min-max | vs LitData | vs best peer |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['median']:.0f} | {r['min']:.0f}-{r['max']:.0f} "
            f"| {r['median'] / base:.2f}x | {r['median'] / best['median']:.2f}x |"
        )
    return lines
